import httpx


async def test_sign_up_returns_201_with_location(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/v1/users", json={"name": "Ann", "email": "ann@example.com", "password": "long enough"}
    )
    assert response.status_code == 201
    assert response.headers["location"] == f"/api/v1/users/{response.json()['id']}"
