"""The benchmark's own logic: its baseline's pool and how it judges the scale targets.

The benchmark itself never runs here (it needs minutes and its own databases).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy import make_url

BENCH = Path(__file__).parent.parent / "bench"


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


run = _load("bench_run", BENCH / "run.py")
raw = _load("bench_raw", BENCH / "baselines" / "raw.py")


@pytest.mark.backends("postgresql")
async def test_the_raw_baseline_returns_connections_to_its_pool_without_resetting_their_session(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # asyncpg's default reset runs RESET ALL on release, a round trip blogapi never pays.
    monkeypatch.setattr(
        raw, "DSN", make_url(database_url).set(drivername="postgresql").render_as_string(False)
    )
    monkeypatch.setattr(raw, "POOL_SIZE", 1)
    app = raw.App()
    async with LifespanManager(app):
        assert app.pool is not None
        async with app.pool.acquire() as connection:
            await connection.execute("SET work_mem = '7MB'")
        async with app.pool.acquire() as connection:
            assert await connection.fetchval("SHOW work_mem") == "7MB"


def _round(post_rps: float, rps: dict[str, float], non2xx: dict[str, int] | None = None) -> dict[str, Any]:
    """One scale run's wrk figures: 10 s of each scenario at the given requests/s."""

    def measured(value: float, failed: int = 0) -> dict[str, Any]:
        return {
            "requests": int(value * 10),
            "seconds": 10.0,
            "rps": value,
            "p50_ms": 1.0,
            "p99_ms": 2.0,
            "non2xx": failed,
            "socket_errors": 0,
            "other_cores": 0.0,
        }

    runs = {
        name: measured(rps.get(name, post_rps), (non2xx or {}).get(name, 0)) for name in run.SCALE_SCENARIOS
    }
    runs["hammer"] = measured(30.0)
    return {"runs": runs, "preflight": {}}


def test_the_scale_targets_fail_a_list_whose_cost_grows_more_than_twofold_and_a_starved_first_page() -> None:
    small = _round(100, {"deep_page": 50, "tags": 50, "posts_page": 50, "hammered": 45})
    # At the large size: the deep page costs 2.5x what it did (50 -> 20 req/s beside the same
    # GET /posts/{id}), /tags 1.25x; the first page keeps only half its rate under hammering.
    large = _round(100, {"deep_page": 20, "tags": 40, "posts_page": 50, "hammered": 25})
    summary = run.scale_summary({"postgresql": {"10000:10k": [small], "1000000:1M": [large]}})

    targets = summary["postgresql"]["targets"]
    assert targets["deep_page"] == {"cost_small": 2.0, "cost_large": 5.0, "growth": 2.5, "pass": False}
    assert targets["tags"]["growth"] == 1.25
    assert targets["tags"]["pass"] is True
    assert targets["q_common"]["pass"] is None  # no target: a common term may cost its matches
    assert targets["hammered"] == {"ratio": 0.5, "pass": False}
    assert summary["postgresql"]["sizes"]["10000:10k"]["hammered_ratio"] == 0.9


def test_a_list_answered_by_the_statement_time_limit_serves_nothing_and_fails_its_target() -> None:
    small = _round(100, {"q_absent": 50})
    # Fast answers, every one a 503: no page was served.
    large = _round(100, {"q_absent": 400}, non2xx={"q_absent": 4000})

    targets = run.scale_summary({"mariadb": {"10000:10k": [small], "1000000:1M": [large]}})["mariadb"][
        "targets"
    ]

    assert targets["q_absent"] == {"cost_small": 2.0, "cost_large": None, "growth": None, "pass": False}


def test_pgbouncer_only_runs_the_pgbouncer_part_alone_and_a_full_run_includes_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("BENCH_PGBOUNCER_PORT", raising=False)

    alone = run.parse_options(["--pgbouncer-only"])
    full = run.parse_options([])

    assert alone.pgbouncer is True
    assert (alone.main, alone.scale, alone.workers, alone.sqlite, alone.soak, alone.auth) == (False,) * 6
    assert (alone.pgbouncer_rounds, alone.pgbouncer_port) == (3, 6439)  # never make pgbouncer-start's 6432
    assert (full.pgbouncer, full.main) == (True, True)
    assert run.parse_options(["--quick"]).pgbouncer is False
    assert run.parse_options(["--no-pgbouncer"]).pgbouncer is False


def test_scale_only_and_pgbouncer_only_together_are_refused() -> None:
    with pytest.raises(SystemExit):
        run.parse_options(["--scale-only", "--pgbouncer-only"])


def test_the_pgbouncer_part_is_skipped_with_its_reason_when_pgbouncer_is_not_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "pgbouncer"
    monkeypatch.setenv("PGBOUNCER_BIN", str(missing))
    options = run.parse_options(["--pgbouncer-only"])

    part = run.pgbouncer_rounds(None, options, "key", {})  # returns before it needs a database

    assert part == {"skipped": f"no PgBouncer at {missing}: `make deploy-tools` installs Debian's pgbouncer"}
    assert run._pgbouncer_lines(part)[-1] == f"Not measured: {part['skipped']}."


def _pooler_run(rps: float, pooler_cpu: float | None = None) -> Any:
    return run.Run(
        requests=int(rps * 10),
        seconds=10.0,
        rps=rps,
        p50_ms=5.0,
        p90_ms=8.0,
        p99_ms=20.0,
        max_ms=40.0,
        non2xx=0,
        socket_errors=0,
        cpu_ms_per_request=1.0,
        db_cpu_ms_per_request=0.2,
        other_cores=0.1,
        pooler_cpu_ms_per_request=pooler_cpu,
    )


def test_the_pgbouncer_ratio_is_taken_within_each_round_and_reported_beside_the_direct_figures() -> None:
    # The machine slows down in round 2: both modes lose half, the ratio within the round holds.
    rounds = [
        {"direct": {"post": _pooler_run(400)}, "pgbouncer": {"post": _pooler_run(300, 0.05)}},
        {"direct": {"post": _pooler_run(200)}, "pgbouncer": {"post": _pooler_run(160, 0.07)}},
        {"direct": {"post": _pooler_run(380)}, "pgbouncer": {"post": _pooler_run(266, 0.06)}},
    ]

    summary = run.pgbouncer_summary(rounds)
    part = {
        "summary": summary,
        "connections": {"direct": [15, 15, 15], "pgbouncer": [6, 7, 6]},
        "pgbouncer": {
            "version": "1.18.0",
            "pool_mode": "transaction",
            "default_pool_size": "20",
            "max_client_conn": "1000",
        },
        "pool_size": "15",
    }
    lines = run._pgbouncer_lines(part)

    assert summary["post"]["ratios_by_round"] == [0.75, 0.8, 0.7]
    assert summary["post"]["ratio"] == 0.75
    assert summary["post"]["direct"]["rps"] == 380
    assert summary["post"]["pgbouncer"]["pooler_cpu_ms_per_request"] == 0.06
    assert summary["post"]["direct"]["pooler_cpu_ms_per_request"] is None
    assert "| GET /api/v1/posts/{id} | 380 | 266 | 0.75 | 0.75, 0.80, 0.70 |" in "\n".join(lines)
    assert lines[-1].startswith("PostgreSQL connections to `blogapi_bench` open after each round's last")
    assert "direct 15, 15, 15 (blogapi's pool); through PgBouncer 6, 7, 6" in lines[-1]
