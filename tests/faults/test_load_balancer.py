"""Two `blogapi serve` instances on one database behind haproxy (deploy/haproxy.cfg), issue 12 part 2.

Each test starts the instances and haproxy as subprocesses, on the test database of the
backend. Each instance runs in a network namespace of its own (a veth pair to haproxy's,
the database reached through a forwarder) where the machine allows it (root, `ip netns`),
else on a free port of 127.0.0.1; BLOGAPI_TEST_REQUIRE=netns makes the fallback a failure.
haproxy checks /health/ready, retries a request whose connection failed on the other
instance, and retries a request that reached a dead instance when it is safe (GET, or a
POST with an Idempotency-Key); a rolling restart drains an instance through haproxy's
runtime API (deploy/haproxy-server.sh) before stopping it. Without Debian's haproxy and
socat the tests are skipped, or fail when BLOGAPI_TEST_REQUIRE includes `haproxy`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx
import pytest
from conftest import PASSWORD, REQUIRED, database_env
from fault_support import Writer, create_writers, free_port, server_env
from sqlalchemy import URL, make_url, select
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from blogapi.db import Database
from blogapi.posts.models import Post

pytestmark = pytest.mark.backends("postgresql", "mariadb")

DEPLOY = Path(__file__).parents[2] / "deploy"
HAPROXY = os.environ.get("BLOGAPI_TEST_HAPROXY", "/usr/sbin/haproxy")
SOCAT = shutil.which("socat")
BLOGAPI = Path(sys.executable).parent / "blogapi"
STARTUP_SECONDS = 120
REQUEST_TIMEOUT = 30
POST_ATTEMPTS = 8


@dataclass
class Place:
    """Where an instance runs: a network namespace of its own, or a port of 127.0.0.1."""

    host: str
    """The address it binds and haproxy sends to."""
    port: int
    database_url: str
    """The test database, as the instance reaches it."""
    run_in: list[str] = field(default_factory=list)
    """The command prefix that runs a process there (`ip netns exec NAME`)."""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


async def place_instances(
    database_url: str, count: int, stack: contextlib.AsyncExitStack
) -> tuple[list[Place], str]:
    """`count` network namespaces, each with a veth pair to this one and a forwarder (socat)
    to the database's port, or where the machine allows none (not root, no `ip netns`), ports
    of 127.0.0.1; and what the places are."""
    url = make_url(database_url)
    try:
        places = []
        for _ in range(count):
            places.append(await asyncio.to_thread(_namespace, url, stack))
        return places, "network namespaces"
    except (OSError, subprocess.CalledProcessError) as exc:
        reason = getattr(exc, "stderr", None) or exc
        return [Place("127.0.0.1", free_port(), database_url) for _ in range(count)], f"ports ({reason})"


def _namespace(url: URL, stack: contextlib.AsyncExitStack) -> Place:
    tag = uuid.uuid4().hex[:8]
    name = f"blogapi-{tag}"
    subnet = f"10.{random.randint(64, 127)}.{random.randint(0, 255)}"
    outside, inside = f"{subnet}.1", f"{subnet}.2"
    _ip("netns", "add", name)
    stack.callback(_ip, "netns", "delete", name)  # and with it its end of the pair
    _ip("link", "add", f"bh{tag}", "type", "veth", "peer", "name", f"bn{tag}")
    stack.callback(subprocess.run, ["ip", "link", "delete", f"bh{tag}"], capture_output=True, check=False)
    _ip("link", "set", f"bn{tag}", "netns", name)
    _ip("addr", "add", f"{outside}/30", "dev", f"bh{tag}")
    _ip("link", "set", f"bh{tag}", "up")
    for args in (("addr", "add", f"{inside}/30", "dev", f"bn{tag}"), ("link", "set", f"bn{tag}", "up")):
        _ip("netns", "exec", name, "ip", *args)
    _ip("netns", "exec", name, "ip", "link", "set", "lo", "up")
    # The database listens on 127.0.0.1 here, which the namespace cannot reach (its loopback is
    # its own): a forwarder listens on this end of the pair.
    port = url.port or {"postgresql": 5432}.get(url.get_backend_name(), 3306)
    forwarder = subprocess.Popen(
        [
            str(SOCAT),
            f"TCP-LISTEN:{port},bind={outside},fork,reuseaddr",
            f"TCP:{url.host or '127.0.0.1'}:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    stack.callback(forwarder.wait, 30)
    stack.callback(forwarder.kill)
    for _ in range(50):
        with contextlib.suppress(OSError), socket.create_connection((outside, port), timeout=1):
            break
        time.sleep(0.1)
    inner_url = url.set(host=outside).render_as_string(hide_password=False)
    return Place(inside, 8000, inner_url, ["ip", "netns", "exec", name])


@dataclass
class Instance:
    """One `blogapi serve`, which may be killed and started again on its port."""

    name: str
    place: Place
    env: dict[str, str]
    directory: Path
    process: subprocess.Popen[bytes] | None = None
    starts: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def address(self) -> str:
        return f"{self.place.host}:{self.place.port}"

    async def start(self) -> None:
        log = self.directory / f"{self.name}-{next(self.starts)}.log"
        argv = [
            *self.place.run_in,
            *(str(BLOGAPI), "serve", "--host", self.place.host, "--port", str(self.place.port)),
        ]
        handle: IO[bytes]
        with log.open("wb") as handle:
            self.process = await asyncio.to_thread(
                subprocess.Popen,
                argv,
                cwd=self.directory,
                env=os.environ | self.env,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + STARTUP_SECONDS
        async with httpx.AsyncClient(base_url=f"http://{self.address}", timeout=2) as probe:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    pytest.fail(f"{self.name} exited {self.process.returncode}:\n{log.read_text()[-3000:]}")
                with contextlib.suppress(httpx.TransportError):
                    if (await probe.get("/health/ready")).status_code == 200:
                        return
                await asyncio.sleep(0.25)
        pytest.fail(f"{self.name} never became ready:\n{log.read_text()[-3000:]}")

    async def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        """Send `sig` and wait for the process to exit; its exit status."""
        process = self.process
        if process is None or process.poll() is not None:
            return process.returncode if process else 0
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            return await asyncio.to_thread(process.wait, 60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            return await asyncio.to_thread(process.wait, 30)


@dataclass
class Balancer:
    base_url: str
    socket: Path
    instances: list[Instance]

    async def server(self, name: str, action: str) -> None:
        """deploy/haproxy-server.sh: drain, idle, ready or up."""
        done = await asyncio.to_thread(
            subprocess.run,
            [str(DEPLOY / "haproxy-server.sh"), str(self.socket), name, action],
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        assert done.returncode == 0, f"haproxy-server.sh {name} {action}: {done.stdout}{done.stderr}"

    async def served(self) -> dict[str, int]:
        """Requests each instance has served (haproxy's `stot`)."""
        done = await asyncio.to_thread(
            subprocess.run,
            [str(SOCAT), "-t", "5", "stdio", f"unix-connect:{self.socket}"],
            input="show stat\n",
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        lines = done.stdout.splitlines()
        columns = lines[0].lstrip("# ").split(",")
        rows = [dict(zip(columns, line.split(","), strict=False)) for line in lines[1:] if line]
        return {row["svname"]: int(row["stot"]) for row in rows if row["pxname"] == "instances"}


@pytest.fixture
async def balancer(database_url: str, database: Database) -> AsyncIterator[Balancer]:
    """haproxy in front of two instances, both in service."""
    missing = [
        what
        for what, where in (("haproxy", HAPROXY), ("socat", SOCAT))
        if not where or not os.access(where, os.X_OK)
    ]
    if missing:
        reason = f"no {' or '.join(missing)} (`make deploy-tools` installs Debian's haproxy and socat)"
        if "haproxy" in REQUIRED:
            pytest.fail(f"required {reason}", pytrace=False)
        pytest.skip(reason)
    directory = Path(tempfile.mkdtemp(prefix="blogapi-haproxy-"))
    stack = contextlib.AsyncExitStack()
    places, where = await place_instances(database_url, 2, stack)
    if "netns" in REQUIRED and where != "network namespaces":
        await stack.aclose()
        pytest.fail(f"required network namespaces unavailable: the instances would run on {where}")
    instances = []
    for number, place in enumerate(places, start=1):
        env = server_env(
            place.database_url,
            # haproxy's address, as the instance sees it (the namespace's pair, or loopback)
            trusted_proxies="10.0.0.0/8,127.0.0.1",
            pool_size=5,
            login_failures_per_account=3,
            login_failures_per_account_and_address=3,
        ) | database_env(place.database_url)
        instances.append(Instance(f"app{number}", place, env, directory))
    listen = f"127.0.0.1:{free_port()}"
    haproxy: subprocess.Popen[bytes] | None = None
    try:
        await asyncio.gather(*(instance.start() for instance in instances))
        with (directory / "haproxy.log").open("wb") as log:
            haproxy = await asyncio.to_thread(
                subprocess.Popen,
                [HAPROXY, "-f", str(DEPLOY / "haproxy.cfg"), "-db"],
                env=os.environ
                | {
                    "BLOGAPI_LISTEN": listen,
                    "BLOGAPI_INSTANCE_1": instances[0].address,
                    "BLOGAPI_INSTANCE_2": instances[1].address,
                    "HAPROXY_DIR": str(directory),
                },
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        socket_path = directory / "haproxy.sock"
        for _ in range(100):
            if socket_path.exists() or haproxy.poll() is not None:
                break
            await asyncio.sleep(0.1)
        assert haproxy.poll() is None, (directory / "haproxy.log").read_text()
        result = Balancer(f"http://{listen}", socket_path, instances)
        for instance in instances:
            await result.server(instance.name, "up")
        yield result
    finally:
        if haproxy is not None:
            haproxy.terminate()
            await asyncio.to_thread(haproxy.wait, 30)
        for instance in instances:
            await instance.stop(signal.SIGKILL)
        await stack.aclose()
        shutil.rmtree(directory, ignore_errors=True)


async def test_the_whole_api_flow_works_through_haproxy_on_both_instances(balancer: Balancer) -> None:
    async with httpx.AsyncClient(base_url=balancer.base_url, timeout=REQUEST_TIMEOUT) as client:
        email = "balanced@example.com"
        signed_up = await client.post(
            "/api/v1/users", json={"name": "Balanced", "email": email, "password": PASSWORD}
        )
        assert signed_up.status_code == 201, signed_up.text
        again = await client.post(
            "/api/v1/users", json={"name": "Twice", "email": email, "password": PASSWORD}
        )
        assert again.status_code == 409, again.text
        token = await client.post("/api/v1/auth/token", data={"username": email, "password": PASSWORD})
        assert token.status_code == 200, token.text
        headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
        assert (await client.get("/api/v1/users/me", headers=headers)).json()["email"] == email

        ids = []
        for number in range(4):
            created = await client.post(
                "/api/v1/posts",
                json={"title": f"balanced {number}", "body": "behind haproxy", "tags": ["lb"]},
                headers=headers | {"Idempotency-Key": f"balanced-{number}"},
            )
            assert created.status_code == 201, created.text
            ids.append(created.json()["id"])
        replayed = await client.post(
            "/api/v1/posts",
            json={"title": "balanced 0", "body": "behind haproxy", "tags": ["lb"]},
            headers=headers | {"Idempotency-Key": "balanced-0"},
        )
        assert replayed.status_code == 201
        assert replayed.json()["id"] == ids[0]
        assert replayed.headers["Idempotent-Replayed"] == "true"

        read = await client.get(f"/api/v1/posts/{ids[0]}")
        assert read.status_code == 200
        unchanged = await client.get(
            f"/api/v1/posts/{ids[0]}", headers={"If-None-Match": read.headers["ETag"]}
        )
        assert unchanged.status_code == 304
        patched = await client.patch(
            f"/api/v1/posts/{ids[0]}",
            json={"title": "balanced, edited"},
            headers=headers | {"If-Match": read.headers["ETag"]},
        )
        assert patched.status_code == 200, patched.text
        stale = await client.patch(
            f"/api/v1/posts/{ids[0]}",
            json={"title": "lost"},
            headers=headers | {"If-Match": read.headers["ETag"]},
        )
        assert stale.status_code == 412, stale.text

        first = await client.get("/api/v1/posts", params={"limit": 2})
        second = await client.get("/api/v1/posts", params={"limit": 2, "cursor": first.json()["next_cursor"]})
        listed = [post["id"] for post in first.json()["items"] + second.json()["items"]]
        assert listed == sorted(ids, reverse=True)
        assert (await client.get("/api/v1/tags")).json()["items"][0]["name"] == "lb"

        assert (await client.delete(f"/api/v1/posts/{ids[1]}", headers=headers)).status_code == 204
        assert (await client.get(f"/api/v1/posts/{ids[1]}")).status_code == 404
        assert (await client.post("/api/v1/posts", json={"title": "anonymous"})).status_code == 401
        invalid = await client.post("/api/v1/posts", json={"title": ""}, headers=headers)
        assert invalid.status_code == 422
        assert invalid.headers["content-type"] == "application/problem+json"
        assert (await client.get("/health/ready")).status_code == 200
    served = await balancer.served()
    assert served["app1"] > 0, served
    assert served["app2"] > 0, served


async def test_failed_logins_are_throttled_across_instances_because_the_count_is_in_the_database(
    balancer: Balancer,
) -> None:
    """Three failures for one account (the limit here), spread over both instances: the next
    attempt is refused whichever instance takes it, even with the right password."""
    async with httpx.AsyncClient(base_url=balancer.base_url, timeout=REQUEST_TIMEOUT) as client:
        email = "throttled@example.com"
        signed_up = await client.post(
            "/api/v1/users", json={"name": "T", "email": email, "password": PASSWORD}
        )
        assert signed_up.status_code == 201, signed_up.text
        before = await balancer.served()
        for _ in range(3):
            wrong = await client.post(
                "/api/v1/auth/token", data={"username": email, "password": "wrong password"}
            )
            assert wrong.status_code == 401, wrong.text
        after = await balancer.served()
        refused = [
            await client.post("/api/v1/auth/token", data={"username": email, "password": PASSWORD})
            for _ in range(2)
        ]
    assert [response.status_code for response in refused] == [429, 429], [r.text for r in refused]
    assert all(after[name] > before[name] for name in ("app1", "app2")), (before, after)


@dataclass
class Load:
    """What the clients saw: failed GETs, and for each POST (one Idempotency-Key) its ids."""

    get_failures: list[str] = field(default_factory=list)
    post_retries: list[str] = field(default_factory=list)
    acknowledged: dict[str, set[int]] = field(default_factory=dict)
    unacknowledged: list[str] = field(default_factory=list)
    gets: int = 0


async def run_load(
    base_url: str, writers: list[Writer], title: str, *, during: Callable[[], Awaitable[None]]
) -> Load:
    """Every writer alternates a GET of a page and a POST (retried by the client, with its key,
    on a failure) while `during` runs, and for a second after."""
    load = Load()
    done = asyncio.Event()

    async def post(client: httpx.AsyncClient, writer: Writer, label: str) -> None:
        key = str(uuid.uuid4())
        body = {"title": f"{title} {label}", "body": "under load", "tags": ["load"]}
        for _ in range(POST_ATTEMPTS):
            try:
                response = await client.post(
                    "/api/v1/posts", json=body, headers=writer.headers | {"Idempotency-Key": key}
                )
            except httpx.TransportError as exc:
                load.post_retries.append(f"{label}: {exc.__class__.__name__}")
            else:
                if response.status_code == 201:
                    load.acknowledged.setdefault(key, set()).add(response.json()["id"])
                    return
                load.post_retries.append(f"{label}: {response.status_code} {response.text[:200]}")
            await asyncio.sleep(0.2)
        load.unacknowledged.append(label)

    async def loop(number: int, writer: Writer) -> None:
        async with httpx.AsyncClient(base_url=base_url, timeout=REQUEST_TIMEOUT) as client:
            for sequence in itertools.count():
                if done.is_set():
                    return
                try:
                    response = await client.get("/api/v1/posts", params={"limit": 5})
                    if response.status_code != 200:
                        load.get_failures.append(f"{response.status_code} {response.text[:200]}")
                except httpx.TransportError as exc:
                    load.get_failures.append(f"{exc.__class__.__name__}: {exc}")
                load.gets += 1
                await post(client, writer, f"{number}-{sequence}")

    async def fault() -> None:
        try:
            await asyncio.sleep(1)
            await during()
            await asyncio.sleep(1)
        finally:
            done.set()

    async with asyncio.timeout(300):
        await asyncio.gather(fault(), *(loop(number, writer) for number, writer in enumerate(writers)))
    return load


async def stored_titles(database_url: str, title: str) -> dict[int, str]:
    engine = create_async_engine(database_url, poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(select(Post.id, Post.title).where(Post.title.startswith(title)))
            return {post_id: post_title for post_id, post_title in rows}
    finally:
        await engine.dispose()


async def assert_each_post_stored_once(load: Load, database_url: str, title: str) -> None:
    assert not load.unacknowledged, (
        f"POSTs never acknowledged after {POST_ATTEMPTS} attempts: {load.unacknowledged}"
    )
    twice = {key: ids for key, ids in load.acknowledged.items() if len(ids) != 1}
    assert not twice, f"one Idempotency-Key acknowledged as several posts: {twice}"
    acknowledged = {next(iter(ids)) for ids in load.acknowledged.values()}
    stored = await stored_titles(database_url, title)
    assert len(stored) == len(load.acknowledged), (len(stored), len(load.acknowledged))
    assert set(stored) == acknowledged


async def test_killing_an_instance_under_load_fails_no_get_and_loses_or_doubles_no_post(
    balancer: Balancer, database_url: str
) -> None:
    writers = await create_writers(database_url, 6)
    killed: list[int] = []

    async def kill_one() -> None:
        await asyncio.sleep(1)
        killed.append(await balancer.instances[0].stop(signal.SIGKILL))
        await asyncio.sleep(3)  # the load goes on against the one left

    load = await run_load(balancer.base_url, writers, "killed", during=kill_one)
    assert killed == [-signal.SIGKILL]
    assert not load.get_failures, load.get_failures
    assert load.gets > 20
    assert len(load.acknowledged) > 20
    await assert_each_post_stored_once(load, database_url, "killed")


async def test_a_rolling_restart_of_both_instances_under_load_answers_every_request(
    balancer: Balancer, database_url: str
) -> None:
    writers = await create_writers(database_url, 6)
    exits: list[int] = []

    async def rolling_restart() -> None:
        for instance in balancer.instances:
            await balancer.server(instance.name, "drain")
            await balancer.server(instance.name, "idle")
            exits.append(await instance.stop(signal.SIGTERM))
            await instance.start()
            await balancer.server(instance.name, "up")
            await balancer.server(instance.name, "ready")

    load = await run_load(balancer.base_url, writers, "rolled", during=rolling_restart)
    # uvicorn finishes the requests it has and runs the lifespan's shutdown; `blogapi serve`
    # then exits 0 (a clean stop, README "Stopping, restarting, version").
    assert exits == [0, 0]
    for instance in balancer.instances:
        assert "Application shutdown complete" in (instance.directory / f"{instance.name}-1.log").read_text()
    assert not load.get_failures, load.get_failures
    assert not load.post_retries, f"POSTs that failed and had to be retried: {load.post_retries}"
    assert load.gets > 20
    await assert_each_post_stored_once(load, database_url, "rolled")
