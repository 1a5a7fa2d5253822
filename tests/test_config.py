"""Config validation: good configs load; each mistake is one sentence naming the field."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from loadtest.model.config import (
    ConfigError,
    HttpTarget,
    TcpTarget,
    load_config,
    parse_config,
    parse_duration,
    resolve,
)
from loadtest.model.kinds import FlowTarget
from loadtest.execution.limits import check_limits

GOOD = {
    "name": "shop",
    "duration": "2m",
    "workers": 3,
    "servers": [{"name": "site", "kind": "http", "listen": "127.0.0.1:0", "workers": 2}],
    "targets": [
        {"name": "home", "url": "http://{site}/", "concurrency": 10},
        {"name": "crawl", "urls": ["http://{site}/site/1", "http://{site}/site/2"], "method": "post",
         "headers": {"X-Trace": "1"}, "body": "hi", "timeout": "500ms", "expect_status": [200, 201],
         "engine": "requests", "concurrency": 4},
        {"name": "echo", "tcp": "127.0.0.1:9000", "connections": 100, "size": 16, "expect": "upper",
         "source_ips": "127.0.0.1-127.0.0.3"},
    ],
}

ONE = {"url": "http://127.0.0.1:1/", "concurrency": 1}  # a target the mistakes below leave valid


def test_a_full_config_loads_into_frozen_typed_fields() -> None:
    config = parse_config(GOOD)
    assert config.name == "shop" and config.duration == 120.0 and config.workers == 3
    home, crawl, echo = config.targets
    assert isinstance(home, HttpTarget) and home.method == "GET" and home.engine == "fast"
    assert crawl.method == "POST" and crawl.headers == (("X-Trace", "1"),) and crawl.body == b"hi"
    assert crawl.timeout == 0.5 and crawl.expect_status == (200, 201) and crawl.engine == "requests"
    assert isinstance(echo, TcpTarget) and echo.message == b"abcdefghijklmnop" and echo.expect == "upper"
    assert echo.source_ips == ("127.0.0.1", "127.0.0.2", "127.0.0.3")
    assert config.servers[0].port == 0 and config.servers[0].workers == 2
    assert resolve(home.urls[0], {"site": "127.0.0.1:5555"}) == "http://127.0.0.1:5555/"
    with pytest.raises(AttributeError):
        config.name = "other"  # type: ignore[misc]


def test_workers_auto_and_requests_only() -> None:
    config = parse_config({"requests": 100, "workers": "auto", "targets": [ONE]})
    assert config.workers is None and config.requests == 100 and config.duration is None
    assert config.targets[0].name == "http://127.0.0.1:1/"


@pytest.mark.parametrize("text, seconds", [("10s", 10), ("2m", 120), ("1h", 3600), ("250ms", 0.25),
                                           ("1.5s", 1.5), (" 7 s ", 7), ("168h", 7 * 86400)])
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text, "duration") == seconds


def target(**fields: object) -> dict[str, object]:
    """A config of one HTTP target with `fields`; one virtual user unless the fields say how much load."""
    load = {} if {"concurrency", "rate", "stages"} & set(fields) else {"concurrency": 1}
    return {"duration": "1s", "targets": [{"url": "http://127.0.0.1:8080/", **load, **fields}]}


BAD = [
    (None, "config: must be a mapping"),
    ([1, 2], "config: must be a mapping"),
    ("text", "config: must be a mapping"),
    ({"targets": [ONE]}, "config: needs duration"),
    ({"duration": "1s"}, "targets: is missing"),
    ({"duration": "1s", "targets": []}, "targets: is empty"),
    ({"duration": "1s", "targets": {"url": "x"}}, "targets: must be a list"),
    ({"duration": "fast", "targets": [ONE]}, "duration: must be a duration"),
    ({"duration": "-5s", "targets": [ONE]}, "duration: must be a duration"),
    ({"duration": "0s", "targets": [ONE]}, "duration: must be more than 0"),
    ({"duration": 30, "targets": [ONE]},
     "duration: a duration needs a unit (100ms, 2s, 5m, 1h), got 30"),
    ({"duration": "169h", "targets": [ONE]},
     "duration: must be more than 0 and at most 7 days, got '169h'"),
    (target(think=100), "targets[0].think: a duration needs a unit (100ms, 2s, 5m, 1h), got 100"),
    (target(think=["50ms", 1]), "targets[0].think: a duration needs a unit"),
    (target(timeout="2"), "targets[0].timeout: a duration needs a unit (100ms, 2s, 5m, 1h), got '2'"),
    (target(stages=[{"duration": "7d", "target": 1}]), "targets[0].stages[0].duration: must be a duration"),
    (target(stages=[{"duration": "100h", "target": 1}, {"duration": "100h", "target": 1}]),
     "targets[0].stages: add up to 8.3 days; a run lasts at most 7 days"),
    ({"duration": "1s", "targets": [{"url": "http://127.0.0.1:1/"}]},
     "targets[0]: needs concurrency (virtual users, closed model) or rate (arrivals per second, open model)"),
    (target(url="http://[::1/"), "targets[0].url: is not a valid URL, got 'http://[::1/'"),
    ({"duration": "1s", "monitor": [99999999999999999999], "targets": [ONE]},
     "monitor[0]: must be a process id (a whole number from 1 to 2147483647), got 99999999999999999999"),
    ({"duration": True, "targets": [ONE]}, "duration: must be a duration"),
    ({"requests": 0, "targets": [ONE]}, "requests: must be a positive integer"),
    ({"requests": "ten", "targets": [ONE]}, "requests: must be a positive integer"),
    ({"duration": "1s", "workers": 0, "targets": [ONE]}, "workers: must be a positive"),
    ({"duration": "1s", "workers": "many", "targets": [ONE]}, "workers: must be"),
    ({"duration": "1s", "colour": "red", "targets": [ONE]}, "config: unknown field 'colour'"),
    ({"duration": "1s", "out": 5, "targets": [ONE]}, "out: must be a folder path"),
    (target(concurrency="many"), "targets[0].concurrency: must be a positive integer, got 'many'"),
    (target(concurrency=-3), "targets[0].concurrency: must be a positive integer, got -3"),
    (target(concurrency=2.5), "targets[0].concurrency: must be a positive integer"),
    (target(url="ftp://127.0.0.1/"), "targets[0].url: must start with http:// or https://"),
    (target(url="not a url"), "targets[0].url: must start with http://"),
    (target(url="http://"), "targets[0].url: has no host"),
    (target(url="http://127.0.0.1:99999/"), "targets[0].url: is not a valid URL"),
    (target(url="http://{nosuch}/"), "targets[0].url: refers to server {nosuch}"),
    (target(method="FETCH"), "targets[0].method: must be one of"),
    (target(timeout="soon"), "targets[0].timeout: must be a duration"),
    (target(engine="turbo"), "targets[0].engine: must be one of fast, requests"),
    (target(expect_status=700), "targets[0].expect_status: must be HTTP status codes"),
    (target(headers=["X: y"]), "targets[0].headers: must be a mapping"),
    (target(headers={"X": "a\r\nb"}), "targets[0].headers.X: must be one line of Latin-1 text"),
    (target(headers={"X": "日本"}), "targets[0].headers.X: must be one line of Latin-1 text"),
    (target(headers={"X": "\ud800"}), "targets[0].headers.X: must be valid text"),
    (target(body="\ud800"), "targets[0].body: must be valid text"),
    (target(name="\x1b[31mred\x07"), "targets[0].name: must be one line of at most 200 characters, without control"),
    (target(name="Aggregated"), "targets[0].name: 'Aggregated' is the name of the reports' total row"),
    (target(url="http://127.0.0.1:1/a\x00b"), "targets[0].url: must not contain spaces or control characters"),
    (target(url="http://127.0.0.1:1/é"), "targets[0].url: must be ASCII; percent-encode"),
    (target(rate=float("inf")), "targets[0].rate: must be a positive number"),
    (target(rate=1e300), "targets[0].rate: must be at most 10,000,000"),
    (target(stages=[{"duration": "1s", "target": 1e300}]), "targets[0].stages[0].target: must be at most"),
    ({"duration": "1s", "name": "\ud800", "targets": [ONE]}, "name: must be valid text"),
    ({"duration": "1s", "workers": 100000, "targets": [ONE]},
     "workers: must be at most 256 processes, got 100000"),
    ({"duration": "1s", "servers": [{"name": "s", "kind": "http", "workers": 100000}],
      "targets": [ONE]}, "servers[0].workers: must be at most 256 processes"),
    ({"duration": "1s", "servers": [{"name": "s", "kind": "http"}], "targets": [{"url": "http://a{s}/"}]},
     "targets[0].url: a {server} reference stands for the whole host:port"),
    ({"duration": "1s", "targets": [{"tcp": "127.0.0.1:9", "message": "\ud800"}]}, "targets[0].message: must be valid"),
    ({"duration": "1s", "targets": [{"tcp": "127.0.0.1:9", "connect_rate": float("inf")}]},
     "targets[0].connect_rate: must be a positive number"),
    ({"duration": "1s", "targets": [{"tcp": "127.0.0.1:9", "source_ips": "127.0.0.1-"}]},
     "targets[0].source_ips: must be addresses such as"),
    (target(body=5), "targets[0].body: must be text"),
    (target(speed=3), "targets[0]: unknown field 'speed'"),
    ({"duration": "1s", "targets": [{"name": "x"}]}, "targets[0]: needs flow or script for a flow, url"),
    ({"duration": "1s", "targets": ["http://127.0.0.1/"]}, "targets[0]: must be a mapping"),
    ({"duration": "1s", "targets": [{"url": "http://127.0.0.1:1/", "name": "a", "concurrency": 1},
                                    {"url": "http://127.0.0.1:1/", "name": "a", "concurrency": 1}]},
     "targets[1].name: 'a' is used twice"),
    ({"duration": "1s", "targets": [{"tcp": "127.0.0.1:70000"}]}, "targets[0].tcp: port must be between 0 and 65535"),
    ({"duration": "1s", "targets": [{"tcp": "nohostport"}]}, "targets[0].tcp: must be HOST:PORT"),
    ({"duration": "1s", "targets": [{"tcp": "127.0.0.1:9", "expect": "reverse"}]}, "targets[0].expect: must be one of"),
    ({"duration": "1s", "targets": [{"tcp": "127.0.0.1:9", "size": 0}]}, "targets[0].size: must be a positive integer"),
    ({"duration": "1s", "targets": [{"tcp": "127.0.0.1:9", "rate": "fast"}]}, "targets[0].rate: must be a positive number"),
    ({"duration": "1s", "targets": [{"tcp": "127.0.0.1:9", "source_ips": "127.0.0.9-127.0.0.1"}]},
     "targets[0].source_ips: range"),
    ({"duration": "1s", "servers": [{"kind": "ftp"}], "targets": [ONE]},
     "servers[0].kind: must be one of http, echo"),
    ({"duration": "1s", "servers": [{"kind": "http", "listen": "127.0.0.1:65536"}],
      "targets": [ONE]}, "servers[0].listen: port must be between 0 and 65535"),
    ({"duration": "1s", "servers": [{"kind": "http", "workers": 0}], "targets": [ONE]},
     "servers[0].workers: must be a positive integer"),
    ({"duration": "1s", "servers": [{"kind": "http", "upper": True}], "targets": [ONE]},
     "servers[0].upper: only an echo server"),
]


@pytest.mark.parametrize("data, message", BAD, ids=[m for _, m in BAD])
def test_bad_configs_name_the_field(data: object, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    text = str(info.value)
    assert message in text
    assert "\n" not in text


def test_files_that_are_not_configs_are_refused_without_reading_them(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)  # a plain open would wait for a writer forever; nobody writes, so it reads as empty
    with pytest.raises(ConfigError, match="fifo.yaml: is a named pipe, not a regular file, and nothing was written"):
        load_config(fifo)
    with pytest.raises(ConfigError, match="is not a regular file or a pipe"):
        load_config("/dev/zero")  # reading it would never end
    huge = tmp_path / "huge.yaml"
    huge.write_bytes(b"#" * (11 * 1024 * 1024))
    with pytest.raises(ConfigError, match="is larger than 10 MiB"):
        load_config(huge)
    twice = tmp_path / "twice.yaml"
    twice.write_text("duration: 1s\ntargets: [{url: 'http://127.0.0.1:1/', concurrency: 1}]\nduration: 2s\n")
    with pytest.raises(ConfigError, match="the field 'duration' is given twice \\(line 3\\)"):
        load_config(twice)


def test_a_config_from_a_pipe_and_with_yaml_merge_keys(tmp_path: Path) -> None:
    text = ("duration: 1s\n"
            "targets: [&base {name: a, url: 'http://127.0.0.1:1/', concurrency: 2}, {<<: *base, name: b}]\n")
    done = subprocess.run([sys.executable, "-c", "import sys; from loadtest.model.config import load_config; "
                           "c = load_config('/dev/stdin'); print([(t.name, t.concurrency) for t in c.targets])"],
                          input=text, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[('a', 2), ('b', 2)]", done.stderr


def test_files_that_are_not_configs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(bytes(range(256)))
    with pytest.raises(ConfigError, match="not a UTF-8 text file"):
        load_config(binary)
    broken = tmp_path / "broken.yaml"
    broken.write_text("targets: [\n  - url: x\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(broken)
    unsafe = tmp_path / "unsafe.yaml"
    unsafe.write_text("duration: !!python/object/apply:os.system ['echo hacked']\ntargets: []\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(unsafe)


def test_the_shipped_configs_load() -> None:
    root = Path(__file__).resolve().parent.parent / "configs"
    configs = sorted(root.glob("*.yaml"))
    assert configs, "configs/ has no YAML files"
    for path in configs:
        config = load_config(path)
        assert config.targets
        for t in config.targets:  # every load the project ships goes to loopback
            if isinstance(t, FlowTarget):
                urls = [s.url for s in t.spec.steps if hasattr(s, "url")] + [t.spec.base_url or ""]
                addresses = [u.split("/")[2] for u in urls if u]
            elif isinstance(t, (TcpTarget, HttpTarget)):
                addresses = [t.address if isinstance(t, TcpTarget) else t.urls[0].split("/")[2]]
            else:
                continue  # a flow's step row: its URL is its flow's
            for address in addresses:
                assert address.startswith(("127.", "{", "[::1]", "localhost")), (path, address)
        yaml.safe_load(path.read_text())


def test_every_config_in_the_readme_is_valid_and_fits_this_machine() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    blocks = re.findall(r"^```yaml[^\n]*\n(.*?)^```", readme, re.S | re.M)
    assert blocks
    for block in blocks:
        config = parse_config(yaml.safe_load(block))
        check_limits(config, workers=2)


def billion_laughs(levels: int = 9, width: int = 9) -> str:
    """A YAML alias bomb: each level lists the one before `width` times; 9 levels of 9 are 387,420,489 values."""
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


def cli_run(tmp_path: Path, text: str | None, *options: str) -> subprocess.CompletedProcess[str]:
    """`loadtest run` on a config holding `text` (no file at all if None), in `tmp_path`."""
    path = tmp_path / "cfg.yaml"
    if text is not None:
        path.write_text(text)
    return subprocess.run([sys.executable, "-m", "loadtest", "run", str(path), *options], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path: Path) -> None:
    bomb = billion_laughs()
    assert len(bomb) < 600  # the was 536 bytes and hung validation past 30 s
    path = tmp_path / "bomb.yaml"
    path.write_text(bomb)
    started = time.perf_counter()
    with pytest.raises(ConfigError, match=r"bomb.yaml: holds more than 1,000,000 values once its YAML aliases"):
        load_config(path)
    assert time.perf_counter() - started < 1.0
    done = cli_run(tmp_path, bomb)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "holds more than 1,000,000 values" in done.stderr
    assert "Traceback" not in done.stderr


def test_aliases_a_config_really_uses_still_load(tmp_path: Path) -> None:
    # An anchor used a few times expands to a few values; only the expansion past the cap is refused.
    path = tmp_path / "reuse.yaml"
    path.write_text("duration: 1s\nheaders: &h {Accept: text/html, X-Team: load}\n"
                    "targets:\n" + "".join(f"  - {{name: t{i}, url: 'http://127.0.0.1:1/', concurrency: 1, "
                                           f"headers: *h}}\n" for i in range(50)))
    with pytest.raises(ConfigError, match="config: unknown field 'headers'"):  # loaded, then validated as usual
        load_config(path)
    wide = tmp_path / "wide.yaml"  # 8 levels of 5: 390,625 values, under the cap
    wide.write_text(billion_laughs(levels=8, width=5))
    with pytest.raises(ConfigError, match="config: unknown field 'l0'"):
        load_config(wide)


def test_an_alias_inside_its_own_anchor_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "loop.yaml"
    path.write_text("duration: 1s\ntargets: &t [{url: 'http://127.0.0.1:1/', concurrency: 1, urls: *t}]\n")
    with pytest.raises(ConfigError, match=r"loop.yaml: a YAML alias \(\*name\) is used inside its own anchor "
                                          r"\(line 2\)"):
        load_config(path)


TARGET = "targets: [{url: 'http://127.0.0.1:1/', concurrency: 1}]\n"
CLI_BAD = [
    ("unclosed ipv6 host", "duration: 1s\ntargets: [{url: 'http://[::1/', concurrency: 1}]\n", [],
     "targets[0].url: is not a valid URL, got 'http://[::1/'"),
    ("pid past pid_t", "duration: 1s\n" + TARGET, ["--watch-pid", "99999999999999999999"],
     "--watch-pid: must be a process id (a whole number from 1 to 2147483647), got 99999999999999999999"),
    ("pid not a number", "duration: 1s\n" + TARGET, ["--watch-pid", "abc"], "--watch-pid: must be a process id"),
    ("monitor pid past pid_t", "duration: 1s\nmonitor: [99999999999999999999]\n" + TARGET, [],
     "monitor[0]: must be a process id"),
    ("zero workers", "duration: 1s\n" + TARGET, ["--workers", "0"],
     "--workers: must be a positive integer or auto, got 0"),
    ("negative workers", "duration: 1s\n" + TARGET, ["--workers", "-1"],
     "--workers: must be a positive integer or auto, got '-1'"),
    ("workers not a number", "duration: 1s\n" + TARGET, ["--workers", "abc"],
     "--workers: must be a positive integer or auto, got 'abc'"),
    ("workers past the cap", "duration: 1s\n" + TARGET, ["--workers", "257"],
     "--workers: must be at most 256 processes, got 257"),
    ("duration option past the cap", "duration: 1s\n" + TARGET, ["--duration", "200h"],
     "--duration: must be more than 0 and at most 7 days, got '200h'"),
    ("duration option without a unit", "duration: 1s\n" + TARGET, ["--duration", "10"],
     "--duration: a duration needs a unit (100ms, 2s, 5m, 1h), got '10'"),
    ("a stage past the cap", "targets: [{url: 'http://127.0.0.1:1/', stages: [{duration: 200h, target: 1}]}]\n",
     [], "targets[0].stages[0].duration: must be more than 0 and at most 7 days, got '200h'"),
    ("stages adding up past the cap", "targets: [{url: 'http://127.0.0.1:1/', stages: [{duration: 168h, target: 9},"
     " {duration: 168h, target: 9}, {duration: 168h, target: 0}]}]\n", [],
     "targets[0].stages: add up to 21.0 days; a run lasts at most 7 days"),
    ("think without a unit", "duration: 1s\ntargets: [{url: 'http://127.0.0.1:1/', concurrency: 2, think: 100}]\n",
     [], "targets[0].think: a duration needs a unit (100ms, 2s, 5m, 1h), got 100"),
    ("no load given", "duration: 1s\ntargets: [{url: 'http://127.0.0.1:1/'}]\n", [],
     "targets[0]: needs concurrency (virtual users, closed model) or rate (arrivals per second, open model)"),
    # inputs that once started a run
    ("full-width digit in a duration", "duration: '\uff11s'\n" + TARGET, [],
     "duration: must be a duration such as 10s, 2m or 1h, got '\uff11s'"),
    ("full-width digits in --duration", "duration: 1s\n" + TARGET, ["--duration", "\uff11\uff10s"],
     "--duration: must be a duration such as 10s, 2m or 1h"),
    ("error_rate past 100%", "duration: 1s\nthresholds: ['error_rate < 200%']\n" + TARGET, [],
     "thresholds[0]: error_rate is at most 100%, so this threshold could never fail, got 'error_rate < 200%'"),
    ("right-to-left override in a target name",
     "duration: 1s\ntargets: [{name: \"evil\u202egnp.exe\", url: 'http://127.0.0.1:1/', concurrency: 1}]\n", [],
     "targets[0].name: must not contain U+202E (RIGHT-TO-LEFT OVERRIDE)"),
    ("sample interval below the floor", "duration: 1s\n" + TARGET, ["--sample-interval", "1ms"],
     "--sample-interval: must be at least 100ms (each sample reads every process of the run), got '1ms'"),
]


@pytest.mark.parametrize("case, text, options, message", CLI_BAD, ids=[c[0] for c in CLI_BAD])
def test_bad_input_is_one_sentence_naming_the_field(tmp_path: Path, case: str, text: str, options: list[str],
                                                     message: str) -> None:
    done = cli_run(tmp_path, text, *options)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.startswith("loadtest: ") and done.stderr.count("\n") == 1 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr + done.stdout and done.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.yaml"]  # no report folder


def test_options_take_auto_and_real_pids(tmp_path: Path) -> None:
    # The checks refuse what is wrong and nothing else: --workers auto and a live pid run.
    config = tmp_path / "ok.yaml"
    config.write_text("requests: 5\nservers: [{name: s, kind: http}]\n"
                      "targets: [{url: 'http://{s}/', concurrency: 1}]\n")
    done = subprocess.run([sys.executable, "-m", "loadtest", "run", str(config), "-q", "--workers", "auto",
                           "--watch-pid", str(os.getpid()), "--out", str(tmp_path / "r")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "r" / "stats.csv").exists()


@pytest.mark.parametrize("value, message", [("abc", "got 'abc'"), ("-1", "got '-1'"), ("0", "got 0"),
                                            ("257", "must be at most 256 processes, got 257")])
def test_serve_workers_are_checked_like_run_workers(tmp_path: Path, value: str, message: str) -> None:
    for kind in ("http", "echo"):
        done = subprocess.run([sys.executable, "-m", "loadtest", "serve", kind, "--listen", "127.0.0.1:0",
                               "--workers", value], cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert done.stderr.startswith("loadtest: --workers: ") and message in done.stderr
