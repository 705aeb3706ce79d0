"""Sticky sessions: hashed keys (header, ip) and signed cookies."""

from __future__ import annotations

from collections import Counter

import pytest

from router.balancing.base import Member, Picker
from router.balancing.group import Group
from router.balancing.keyhash import hash64
from router.balancing.settings import StickyConfig
from router.balancing.sticky import cookie_value, sign_replica
from router.balancing.tables import KeyTables
from router.errors import ConfigError
from tests.balancing_support import ctx, factory, first, members, replica

KEY_ENV = {"STICKY_KEY": "0123456789abcdef0123456789abcdef"}
COOKIE = {"sticky": {"mode": "cookie", "key_env": "STICKY_KEY"}}


def pool(n: int) -> list[Member]:
    return [Member(replica(f"r{i}"), 100.0) for i in range(n)]


def placement(group_members: list[Member], keys: list[str]) -> dict[str, str]:
    import random

    group = Group("all", group_members, "round_robin", {}, random.Random(0))
    return {k: next(group.keyed_order(hash64(k))).id for k in keys}


def test_removing_one_of_n_moves_only_its_keys_about_one_nth() -> None:
    keys = [f"session-{i}" for i in range(10_000)]
    for n in (5, 10, 20):
        before = placement(pool(n), keys)
        gone = "r3"
        after = placement([m for m in pool(n) if m.replica.id != gone], keys)
        moved = [k for k in keys if before[k] != after[k]]
        # Only the departed replica's keys move, and they are ~1/N of all keys.
        assert all(before[k] == gone for k in moved)
        assert len(moved) == sum(1 for k in keys if before[k] == gone)
        assert len(moved) / len(keys) == pytest.approx(1 / n, rel=0.15)


def test_adding_a_replica_takes_keys_only_for_itself() -> None:
    keys = [f"k{i}" for i in range(10_000)]
    before = placement(pool(8), keys)
    after = placement(pool(9), keys)
    moved = [k for k in keys if before[k] != after[k]]
    assert all(after[k] == "r8" for k in moved)
    assert len(moved) / len(keys) == pytest.approx(1 / 9, rel=0.15)


def test_rendezvous_honours_weights_within_two_percent() -> None:
    weights = {"a": 100.0, "b": 200.0, "c": 300.0, "d": 400.0}
    weighted = [Member(replica(rid), w) for rid, w in weights.items()]
    keys = [f"user-{i}" for i in range(100_000)]
    counts = Counter(placement(weighted, keys).values())
    total = sum(weights.values())
    for rid, weight in weights.items():
        expected = weight / total
        assert abs(counts[rid] / len(keys) - expected) / expected < 0.02, counts


def test_header_mode_keeps_a_session_on_one_replica_and_spreads_sessions() -> None:
    picker = factory({"sticky": {"mode": "header"}})(pool(5), {})
    chosen = {first(picker, ctx(headers={"X-Session-Id": "alice"})).id for _ in range(50)}
    assert len(chosen) == 1
    spread = {first(picker, ctx(headers={"X-Session-Id": f"user{i}"})).id for i in range(200)}
    assert len(spread) == 5
    # No key: the policy (round-robin) decides.
    plain = {first(picker, ctx()).id for _ in range(5)}
    assert len(plain) == 5
    context = ctx(headers={"X-Session-Id": "alice"})
    first(picker, context)
    assert context.explanation == "sticky header: maglev"


def test_ip_mode_is_stable_across_snapshots_and_routers() -> None:
    # Two independent factories (two routers, or two snapshots) agree on the placement.
    one = factory({"policy": "least_request", "sticky": {"mode": "ip"}}, seed=1)(pool(7), {})
    two = factory({"policy": "least_request", "sticky": {"mode": "ip"}}, seed=2)(pool(7), {})
    for i in range(50):
        address = f"198.51.100.{i}"
        assert first(one, ctx(address)).id == first(two, ctx(address)).id


def test_a_sticky_key_keeps_its_region_under_geo() -> None:
    spec = {"eu-central-1": 4, "us-east-1": 4}
    cfg = {"policy": "geo", "sticky": {"mode": "header"}}
    picker = factory(cfg)(members(spec), {})
    for i in range(30):
        headers = {"X-Session-Id": f"s{i}", "CF-IPCountry": "DE"}
        picks = {first(picker, ctx(headers=headers, trusted=True)).id for _ in range(5)}
        assert len(picks) == 1
        assert picks.pop().startswith("eu-central-1")


def test_a_sticky_key_moves_when_its_replica_leaves() -> None:
    build = factory({"sticky": {"mode": "header"}})
    full = build(pool(4), {})
    headers = {"X-Session-Id": "bob"}
    home = first(full, ctx(headers=headers)).id
    without = build([m for m in pool(4) if m.replica.id != home], {})
    assert first(without, ctx(headers=headers)).id != home


def set_cookie(picker: Picker, cookie: str | None = None) -> tuple[str, list[tuple[str, str]]]:
    context = ctx(headers={"Cookie": cookie} if cookie else {})
    chosen = first(picker, context)
    return chosen.id, context.response_headers


def test_cookie_mode_pins_the_client_to_the_replica_that_served() -> None:
    picker = factory(COOKIE, environ=KEY_ENV)(pool(4), {})
    served, headers = set_cookie(picker)
    assert len(headers) == 1
    assert headers[0][0] == "Set-Cookie"
    value = cookie_value(headers[0][1].split(";", 1)[0], "router_replica")
    assert value is not None
    assert value.startswith(f"{served}.")
    assert "HttpOnly" in headers[0][1]
    assert "SameSite=Lax" in headers[0][1]
    for _ in range(10):
        again, again_headers = set_cookie(picker, f"theme=dark; router_replica={value}")
        assert again == served
        assert again_headers == []  # the cookie is already right: not sent again


def test_a_forged_cookie_is_ignored_and_replaced() -> None:
    picker = factory(COOKIE, environ=KEY_ENV)(pool(4), {})
    forged = sign_replica(b"not the key at all, attacker's own", "r2")
    picks = {set_cookie(picker, f"router_replica={forged}")[0] for _ in range(8)}
    assert len(picks) == 4  # round-robin, not pinned to r2
    _, headers = set_cookie(picker, "router_replica=r2.AAAAAAAAAAAAAAAAAAAAAA")
    assert headers
    assert "router_replica=" in headers[0][1]
    context = ctx(headers={"Cookie": f"router_replica={forged}"})
    first(picker, context)
    assert context.explanation.startswith("sticky cookie (invalid or stale):")


def test_a_cookie_for_a_replica_that_is_no_longer_routable_is_re_picked() -> None:
    build = factory(COOKIE, environ=KEY_ENV)
    value = sign_replica(KEY_ENV["STICKY_KEY"].encode(), "r1")
    assert set_cookie(build(pool(3), {}), f"router_replica={value}")[0] == "r1"
    drained = build([m for m in pool(3) if m.replica.id != "r1"], {})
    served, headers = set_cookie(drained, f"router_replica={value}")
    assert served != "r1"
    assert f"router_replica={served}." in headers[0][1]


def test_failover_rewrites_the_cookie_to_the_replica_that_answers() -> None:
    picker = factory(COOKIE, environ=KEY_ENV)(pool(3), {})
    value = sign_replica(KEY_ENV["STICKY_KEY"].encode(), "r0")
    context = ctx(headers={"Cookie": f"router_replica={value}"})
    attempts = picker.candidates(context)
    assert next(attempts).id == "r0"
    assert context.response_headers == []
    fallback = next(attempts)  # r0 failed: the engine asks for the next candidate
    assert fallback.id != "r0"
    cookies = [v for k, v in context.response_headers if k == "Set-Cookie"]
    assert len(cookies) == 1
    assert cookies[0].startswith(f"router_replica={fallback.id}.")
    assert context.explanation.startswith("sticky cookie -> r0 failed;")


def test_cookie_attributes_follow_config() -> None:
    cfg = {
        "sticky": {
            "mode": "cookie",
            "key_env": "STICKY_KEY",
            "cookie_name": "pin",
            "cookie_secure": True,
        }
    }
    _, headers = set_cookie(factory(cfg, environ=KEY_ENV)(pool(2), {}))
    assert headers[0][1].startswith("pin=")
    assert headers[0][1].endswith("; Secure")


def test_a_missing_or_short_signing_key_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="STICKY_KEY"):
        factory(COOKIE, environ={})
    with pytest.raises(ConfigError, match="at least 16"):
        factory(COOKIE, environ={"STICKY_KEY": "short"})


def test_without_key_env_cookies_still_work_within_the_process(
    caplog: pytest.LogCaptureFixture,
) -> None:
    picker = factory({"sticky": {"mode": "cookie"}})(pool(3), {})
    served, headers = set_cookie(picker)
    cookie = headers[0][1].split(";", 1)[0]
    assert set_cookie(picker, cookie)[0] == served
    assert any("random per-process key" in r.getMessage() for r in caplog.records)
    # A config reload builds a new factory: cookies already handed out keep working.
    reloaded = factory({"sticky": {"mode": "cookie"}}, seed=99)(pool(3), {})
    assert set_cookie(reloaded, cookie)[0] == served


def test_cookie_parsing() -> None:
    assert cookie_value("a=1; router_replica=x.y; b=2", "router_replica") == "x.y"
    assert cookie_value('router_replica="q"', "router_replica") == "q"
    assert cookie_value("xrouter_replica=1", "router_replica") is None
    assert cookie_value(None, "router_replica") is None


def test_sticky_with_debug_headers() -> None:
    cfg = {"debug_headers": True, "sticky": {"mode": "ip"}}
    picker = factory(cfg)(pool(3), {})
    context = ctx("203.0.113.9")
    first(picker, context)
    assert context.response_headers == [("X-Router-Route", "sticky ip: maglev")]


def test_sticky_tables_survive_a_snapshot_with_the_same_group() -> None:
    tables = KeyTables(StickyConfig(mode="header"))
    first_table = tables.get(pool(3))
    tables.next_generation()
    assert tables.get(pool(3)) is first_table  # unchanged members and weights: kept
    assert tables.get(pool(4)) is not first_table  # different membership: rebuilt
    reweighted = [Member(m.replica, 50.0) for m in pool(3)]
    assert tables.get(reweighted) is not first_table
    assert tables.builds == 3
    tables.next_generation()
    tables.next_generation()
    assert tables.get(pool(3)) is not first_table  # dropped once unused for a whole build


def test_odd_header_bytes_still_place_the_key() -> None:
    # aiohttp keeps undecodable header bytes as surrogates: hashing must not fail on them.
    picker = factory({"sticky": {"mode": "header"}})(pool(3), {})
    odd = {"X-Session-Id": "caf\udce9"}
    assert first(picker, ctx(headers=odd)).id == first(picker, ctx(headers=odd)).id
