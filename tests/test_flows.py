"""Flows, piece by piece: templates, captures and checks, data slices, step validation, and virtual users run in
this process against the embedded HTTP server (real processes and sockets on loopback)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gevent
import pytest

from loadtest.model.config import ServerSpec
from loadtest.model.flows.data import DataError, DataTable, RowDealer, check_unique, read_data
from loadtest.model.flows.extract import ExtractError, parse_capture, parse_expect
from loadtest.model.flows.source import ScriptError, load_function
from loadtest.model.flows.spec import FlowSpec, flow_rows, scan_script
from loadtest.model.flows.steps import FlowError, parse_steps
from loadtest.engine.flows.target import flow_factory
from loadtest.model.flows.template import Context, MissingValue, TemplateError, compile_json, compile_template
from loadtest.engine.protocols import Deadlines
from loadtest.execution.servers import ServerGroup
from loadtest.core.recorder import TargetRecorder


class Budget:
    """What a flow session reads of the worker's budget: whether the run is stopping."""

    stopping = False


@pytest.fixture(scope="module")
def site() -> Iterator[ServerGroup]:
    with ServerGroup.start(ServerSpec(name="site", kind="http", host="127.0.0.1", port=0, workers=1)) as group:
        yield group


def ctx(**values: str) -> Context:
    c = Context(7, random.Random(1))
    c.values = dict(values)
    c.data = {"user": "ann", "password": "pw"}
    c.iteration = 3
    return c


# Templates


def test_template_fills_captures_columns_and_builtins() -> None:
    t = compile_template("/u/${user}/${iteration}/${token}/${data.user}/${password}/${random(5, 5)}")
    assert t.render(ctx(token="T")) == "/u/7/3/T/ann/pw/5"
    assert t.names == {"token", "data.user", "password"}
    assert compile_template("/plain").static == "/plain"
    assert compile_template("/${uuid}").static is None
    uuid_text = compile_template("${uuid}").render(ctx())
    assert len(uuid_text) == 36 and uuid_text[14] == "4"
    # {server} references are not placeholders
    assert compile_template("http://{site}/x").static == "http://{site}/x"
    one = ctx()
    drawn = {int(compile_template("${random(1, 3)}").render(one)) for _ in range(200)}
    assert drawn == {1, 2, 3}


def test_a_capture_shadows_a_column_and_a_missing_value_is_named() -> None:
    assert compile_template("${user}-${password}").render(ctx(password="captured")) == "7-captured"
    with pytest.raises(MissingValue, match="token"):
        compile_template("${token}").render(ctx())


def test_json_bodies_escape_filled_in_values() -> None:
    t = compile_json({"user": "${name}", "n": 1})
    assert t.render(ctx(name='a"b\\c')) == '{"user":"a\\"b\\\\c","n":1}'


@pytest.mark.parametrize("text, known, columns, message", [
    ("${token}", frozenset(), None, "not captured by an earlier step"),
    ("${data.nope}", frozenset({"user"}), frozenset({"user"}), "no column 'nope'"),
    ("${data.user}", frozenset(), None, "has no data"),
    ("${random(5, 1)}", frozenset(), None, "a <= b"),
    ("${1+1}", frozenset(), None, "is not a placeholder"),
])
def test_unknown_variables_are_found_before_the_run(text: str, known: frozenset[str],
                                                    columns: frozenset[str] | None, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        compile_template(text, known, columns)


# Captures and checks


def test_captures_read_json_paths_headers_and_regexes() -> None:
    body = '{"token": "abc", "items": [{"id": 5}, {"id": 6}], "n": null}'
    headers = {"location": "/next"}
    parsed: list[Any] = []
    assert parse_capture("t", "json:token").take(body, parsed, headers) == "abc"
    assert parse_capture("i", "json:items[1].id").take(body, parsed, headers) == "6"
    assert parse_capture("x", "json:items[9].id").take(body, parsed, headers) is None
    assert parse_capture("x", "json:n").take(body, parsed, headers) is None
    assert parse_capture("l", "header:Location").take(None, [], headers) == "/next"
    assert parse_capture("r", 'regex:"id": (\\d+)').take(body, [], headers) == "5"
    assert parse_capture("r", "regex:tok..").take(body, [], headers) == "token"
    assert parse_capture("t", "json:token").take("not json", [], headers) is None
    assert parse_capture("l", "header:location").needs.headers == {"location"}
    assert not parse_capture("l", "header:location").needs.body and parse_capture("t", "json:a").needs.body


@pytest.mark.parametrize("spec", ["token", "xml:a", "json:", "json:a..b", "regex:(", 5])
def test_bad_captures_are_one_sentence(spec: Any) -> None:
    with pytest.raises(ExtractError):
        parse_capture("x", spec)


def test_expect_checks_status_and_body() -> None:
    e = parse_expect({"status": [200, 201], "body_contains": "ok"})
    assert e.status_ok(201) and not e.status_ok(302)
    assert parse_expect(None).status_ok(302) and not parse_expect(None).status_ok(404)
    assert e.body_problem("all ok", False) is None
    assert "does not contain 'ok'" in (e.body_problem("nope", True) or "") and "1024 KiB" in (
        e.body_problem("nope", True) or "")
    assert not parse_expect({"status": 200}).needs.body
    for bad in ({"status": "200"}, {"status": [99]}, {"body": "x"}, {"body_contains": ""}, [200]):
        with pytest.raises(ExtractError):
            parse_expect(bad)


# Data


def test_data_file_is_read_and_sliced_per_worker(tmp_path: Path) -> None:
    path = tmp_path / "users.csv"
    path.write_text("user,password\n" + "".join(f"u{i},p{i}\n" for i in range(10)))
    table = read_data(path)
    assert table.columns == ("user", "password") and len(table.rows) == 10
    slices = [[r["user"] for r in table.slice_for(k, 3)] for k in range(3)]
    assert sorted(sum(slices, [])) == sorted(f"u{i}" for i in range(10))  # every row once, in one slice
    assert all(not set(a) & set(b) for i, a in enumerate(slices) for b in slices[i + 1:])
    assert check_unique(table, 10, 3) is None
    assert "add rows" in (check_unique(table, 11, 3) or "")


@pytest.mark.parametrize("text, message", [
    ("", "no header"), ("a,a\n1,2\n", "name of its own"), ("a,b\n1\n", "line 2 has 1 fields"), ("a,b\n", "no rows"),
])
def test_bad_data_files_are_one_sentence(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "d.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        read_data(path)
    with pytest.raises(DataError, match="does not exist"):
        read_data(tmp_path / "missing.csv")


def test_unique_rows_are_never_held_twice_and_cycle_rows_go_round() -> None:
    rows = [{"user": f"u{i}"} for i in range(3)]
    unique = RowDealer(list(rows), "unique")
    held = [unique.take() for _ in range(3)]
    assert unique.take() is None  # every row is held
    assert {r["user"] for r in held if r} == {"u0", "u1", "u2"}
    unique.give_back(held[1])  # type: ignore[arg-type]
    assert unique.take() == {"user": "u1"}
    cycle = RowDealer(list(rows), "cycle")
    assert [cycle.take()["user"] for _ in range(4)] == ["u0", "u1", "u2", "u0"]  # type: ignore[index]


# Steps


@pytest.mark.parametrize("steps, message", [
    ([], "must be a list of steps"),
    ([{"think": "1s"}], "no request step"),
    ([{"url": "http://{site}/me", "headers": {"Authorization": "Bearer ${token}"}},
      {"url": "http://{site}/login", "capture": {"token": "json:token"}}], r"flow\[0\].headers.Authorization: .*token"),
    ([{"url": "http://{nope}/"}], r"flow\[0\].url: refers to server \{nope\}"),
    ([{"url": "ftp://x/"}], "must start with http"),
    ([{"url": "http://${host}/"}], "host:port may not hold"),
    ([{"name": "a", "url": "http://{site}/"}, {"name": "a", "url": "http://{site}/"}], "another step is named"),
    ([{"url": "http://{site}/", "repeat": 0}], "repeat"),
    ([{"url": "http://{site}/", "capture": {"uuid": "json:a"}}], "cannot name a variable"),
    ([{"url": "http://{site}/", "capture": {"a": "nope"}}], r"capture.a: must be json:PATH"),
    ([{"url": "http://{site}/", "wait": 1}], "unknown key 'wait'"),
    ([{"url": "http://{site}/", "json": {}, "body": "x"}], "not both"),
    ([{"think": "soon"}, {"url": "http://{site}/"}], r"flow\[0\].think: must be a duration"),
    ([{"url": "http://{site}/", "expect": {"body_contains": "${later}"}}],
     r"flow\[0\].expect.body_contains: \$\{later\} is not captured"),
])
def test_bad_steps_name_their_field(steps: list[Any], message: str) -> None:
    with pytest.raises(FlowError, match=message):
        parse_steps(steps, "targets[0].flow", None, {"site"})


# Virtual users in this process, against the embedded server


def run_passes(site: ServerGroup, spec: FlowSpec, passes: int, users: int = 1) -> dict[str, TargetRecorder]:
    rows = flow_rows("shop", spec)
    recorders = [TargetRecorder(i) for i in range(len(rows))]
    make = flow_factory("shop", spec, recorders, 0, 1, {"site": site.address}, Deadlines(), Budget(), lambda: None)

    def user() -> None:
        session = make()
        try:
            for _ in range(passes):
                session.exchange()
        finally:
            session.close()

    gevent.joinall([gevent.spawn(user) for _ in range(users)], timeout=20, raise_error=True)
    return {name: rec for (name, _), rec in zip(rows, recorders)}


LOGIN = {"name": "login", "method": "POST", "url": "http://{site}/login",
         "json": {"user": "${data.user}", "password": "${data.password}"},
         "capture": {"token": "json:token"}, "expect": {"status": [200], "body_contains": "token"}}
ME = {"name": "me", "url": "http://{site}/me", "headers": {"Authorization": "Bearer ${token}"}}


def test_a_yaml_flow_captures_a_token_and_uses_it(site: ServerGroup) -> None:
    table = DataTable("d", ("user", "password"), tuple((f"u{i}", "pw") for i in range(4)))
    steps = parse_steps([LOGIN, ME, {"think": "1ms"}, {"name": "page", "url": "http://{site}/site/${random(1, 3)}",
                                                         "repeat": 2}],
                        "flow", frozenset(table.columns), {"site"})
    before = site.served()
    rows = run_passes(site, FlowSpec(steps=steps, data=table), passes=5, users=4)
    after = site.served()
    assert {n: (r.requests, dict(r.failures)) for n, r in rows.items()} == {
        "shop": (20, {}), "shop/login": (20, {}), "shop/me": (20, {}), "shop/page": (40, {})}
    # the server's own count per route equals each step's row
    assert after["/login"] - before["/login"] == 20 and after["/me"] - before["/me"] == 20
    assert after["/site"] - before["/site"] == 40
    assert rows["shop"].latency.count == 20 and rows["shop"].latency.min >= 1_000_000  # the journey, think included


def test_failed_checks_and_captures_end_the_pass(site: ServerGroup) -> None:
    steps = parse_steps([
        {"name": "login", "method": "POST", "url": "http://{site}/login", "json": {"user": "${user}", "password": "x"},
         "capture": {"token": "json:token", "missing": "json:nothing"}},
        ME,
    ], "flow", frozenset(), {"site"})
    rows = run_passes(site, FlowSpec(steps=steps), passes=3)
    assert rows["shop/login"].failures == {"capture": 3} and rows["shop/me"].requests == 0
    assert rows["shop"].failures == {"capture": 3}
    assert "missing: json:nothing found nothing" in rows["shop"].samples["capture"]
    steps = parse_steps([{"name": "me", "url": "http://{site}/me", "expect": {"status": [401],
                                                                              "body_contains": "welcome"}},
                         {"name": "page", "url": "http://{site}/"}], "flow", frozenset(), {"site"})
    rows = run_passes(site, FlowSpec(steps=steps), passes=2)
    assert rows["shop/me"].failures == {"check": 2} and rows["shop/page"].requests == 0
    assert rows["shop"].samples["check"].startswith("shop/me: the response body does not contain 'welcome'")
    # a variable with no value when the request is built: nothing is sent, the flow's row has a capture failure
    steps = parse_steps([ME], "flow", frozenset({"token"}), {"site"})
    rows = run_passes(site, FlowSpec(steps=steps), passes=2)
    assert rows["shop/me"].requests == 0 and rows["shop"].failures == {"capture": 2}
    assert rows["shop"].samples["capture"] == "shop/me: no value for ${token}"
    steps = parse_steps([{**ME, "headers": {"Authorization": "Bearer junk"}}], "flow", frozenset(), {"site"})
    rows = run_passes(site, FlowSpec(steps=steps), passes=2)
    assert rows["shop/me"].failures == {"status": 2} and rows["shop"].samples["status"] == "shop/me: HTTP 401"


def test_body_contains_is_filled_in_per_user(site: ServerGroup) -> None:
    login = {"name": "login", "method": "POST", "url": "http://{site}/login",
             "json": {"user": "u${user}", "password": "x"}, "capture": {"token": "json:token"}}
    me = {**ME, "expect": {"body_contains": 'u${user}"'}}
    rows = run_passes(site, FlowSpec(steps=parse_steps([login, me], "flow", frozenset(), {"site"})), passes=2,
                      users=3)
    assert rows["shop/me"].requests == 6 and rows["shop/me"].failures == {}
    wrong = {**ME, "expect": {"body_contains": "x${user}-${token}"}}
    rows = run_passes(site, FlowSpec(steps=parse_steps([login, wrong], "flow", frozenset(), {"site"})), passes=1)
    assert rows["shop/me"].failures == {"check": 1}
    assert rows["shop/me"].samples["check"].startswith("the response body does not contain 'x0-")  # filled in
    assert "${" not in rows["shop/me"].samples["check"]


def test_a_one_request_flow_records_each_request_in_both_rows_exactly(site: ServerGroup) -> None:
    # A flow of one request with nothing to fill in or read takes the short path (`_exchange_one`): the step's
    # row and the flow's must still each hold every request, with its bytes, and failures keep their kind.
    steps = parse_steps([{"name": "home", "url": "http://{site}/site/3"}], "flow", frozenset(), {"site"})
    before = site.served()
    rows = run_passes(site, FlowSpec(steps=steps), passes=30, users=3)
    after = site.served()
    step, flow = rows["shop/home"], rows["shop"]
    assert after["/site"] - before["/site"] == 90
    assert (step.requests, flow.requests, step.latency.count, flow.latency.count) == (90, 90, 90, 90)
    assert step.failures == {} and flow.failures == {}
    assert step.content_bytes > 90 * 1024 and flow.content_bytes == step.content_bytes
    assert (flow.bytes_in, flow.bytes_out) == (step.bytes_in, step.bytes_out) and step.bytes_out > 0
    assert flow.latency.min >= step.latency.min  # the pass holds its one request
    steps = parse_steps([{"name": "gone", "url": "http://{site}/status/503"}], "flow", frozenset(), {"site"})
    rows = run_passes(site, FlowSpec(steps=steps), passes=4)
    assert rows["shop/gone"].failures == {"status": 4} and rows["shop"].failures == {"status": 4}
    assert rows["shop"].samples["status"] == "shop/gone: HTTP 503"
    steps = parse_steps([{"name": "gone", "url": "http://{site}/status/503", "expect": {"status": [503]}}], "flow",
                        frozenset(), {"site"})
    rows = run_passes(site, FlowSpec(steps=steps), passes=4)
    assert rows["shop/gone"].failures == {} and rows["shop"].requests == 4 and rows["shop"].failures == {}


def test_a_step_that_cannot_connect_keeps_its_kind(site: ServerGroup) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        steps = parse_steps([{"name": "x", "url": f"http://127.0.0.1:{port}/"}], "flow", frozenset(), set())
        rows = run_passes(site, FlowSpec(steps=steps), passes=2)
    assert rows["shop/x"].failures == {"refused": 2} and rows["shop"].failures == {"refused": 2}


SCRIPT = '''
def shop(user):
    r = user.post("/login", json={"user": f"u{user.index}", "password": "x"}, name="login")
    me = user.get("/me", headers={"Authorization": "Bearer " + r.json()["token"]}, name="me")
    user.check(me.json()["user"] == f"u{user.index}", "me is someone else")
    user.check(me.headers["content-type"] == "application/json" and me.status == 200, "bad headers")
    user.get("/site/1", name="page", params={"q": 1})
    if user.iteration == 1:
        raise KeyError("boom")
    user.check(user.iteration != 2, "third pass")

def paths(user):
    user.get("/")
    user.get("/status/404", expect=[404])
    user.get("/status/500")
    user.get("/never")
'''


def test_a_python_flow_records_rows_checks_and_script_errors(site: ServerGroup, tmp_path: Path) -> None:
    script = tmp_path / "flows.py"
    script.write_text(SCRIPT)
    spec = FlowSpec(script=str(script), function="shop", base_url="http://{site}", script_rows=scan_script(script))
    assert flow_rows("shop", spec)[:4] == [("shop", "FLOW"), ("shop/login", "POST"), ("shop/me", "GET"),
                                           ("shop/page", "GET")]
    rows = run_passes(site, spec, passes=4)
    assert rows["shop/login"].requests == rows["shop/me"].requests == rows["shop/page"].requests == 4
    assert rows["shop"].failures == {"script": 1, "check": 1}
    assert rows["shop"].samples["script"] == "KeyError: 'boom' (flows.py line 9)"
    assert rows["shop"].samples["check"] == "third pass"
    spec = FlowSpec(script=str(script), function="paths", base_url="http://{site}", script_rows=scan_script(script))
    rows = run_passes(site, spec, passes=2)
    assert rows["shop//"].requests == 2 and rows["shop//status/404"].failures == {}
    assert rows["shop//status/500"].failures == {"status": 2} and rows["shop//never"].requests == 0
    assert rows["shop"].failures == {"status": 2}


def test_scripts_that_cannot_be_used_are_one_sentence(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import no_such_module_here\n")
    with pytest.raises(ScriptError, match=r"bad.py failed to import: ModuleNotFoundError: .*no_such_module_here"):
        load_function(bad, "shop")
    bad.write_text("def shop(user)\n")
    with pytest.raises(ScriptError, match="bad.py line 1"):
        load_function(bad, "shop")
    bad.write_text("def other(user): pass\nshop = 5\n")
    with pytest.raises(ScriptError, match="has no function 'nope'"):
        load_function(bad, "nope")
    with pytest.raises(ScriptError, match="'shop' is not a function"):
        load_function(bad, "shop")
    with pytest.raises(ScriptError, match="does not exist"):
        load_function(tmp_path / "missing.py", "shop")
