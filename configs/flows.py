"""Python flows for configs/shop.yaml: plain functions of one argument, the virtual user.

Each runs as one pass of a virtual user, again and again until the run ends.
`user.get/post/put/delete/request` go through loadtest's fast engine; a path is
joined to the target's `url:`. `name=` names the request's stats row.
"""


def shop(user):
    """Log in as a user of our own, use the token, browse three pages."""
    r = user.post("/login", json={"user": f"user{user.index}", "password": "secret"}, name="login")
    token = r.json()["token"]
    me = user.get("/me", headers={"Authorization": f"Bearer {token}"}, name="me")
    user.check(me.json()["user"] == f"user{user.index}", "/me answered for someone else")
    user.think(0.05)
    for _ in range(3):
        user.get(f"/site/{(user.index + user.iteration) % 100}", name="page")
