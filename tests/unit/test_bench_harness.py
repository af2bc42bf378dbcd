"""The benchmark harness's pure parts: targets and verdicts, the JSON record, part selection and failure rows,
the README section renderer. No process is started."""

from __future__ import annotations

import json
import sys
import types
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench import record, report, run
from bench.common import Row, fmt, parse_target, table

DATE = datetime(2026, 11, 30, 9, 12, 3, tzinfo=UTC)


def _record(parts: list[record.PartResult], mode: str = "quick") -> dict:
    return record.build(mode, parts, date=DATE, machine="2 cores, test CPU", commit="a" * 40, dirty=False,
                        load_start=[1.5, 1.0, 0.5], load_end=[2.25, 1.1, 0.6], seconds=81.24)


def _parts() -> list[record.PartResult]:
    return [record.PartResult("sim", [Row("allocate", 950.0, "VMs/s", size="300 VMs"),
                                      Row("a | b", 2.0, "s", "<= 1.5, ratio <= 5", "n=3", "1+100 VMs", 0.5)], 3.21),
            record.PartResult("rq", [Row("rq FAILED", None, "", note="RuntimeError: no worker")], 1.0,
                              "RuntimeError: no worker")]


# ------------------------------------------------------------------ targets, verdicts, ratio

def test_parse_target_reads_bounds_on_value_and_ratio() -> None:
    assert parse_target("") == []
    assert parse_target("< 30") == [(False, "<", 30.0)]
    assert parse_target(">-2.5e-3") == [(False, ">", -0.0025)]
    assert parse_target("<= 1.5, ratio <= 5") == [(False, "<=", 1.5), (True, "<=", 5.0)]
    assert parse_target("≥ 150 and ratio ≥ 0.5") == [(False, ">=", 150.0), (True, ">=", 0.5)]


@pytest.mark.parametrize("bad", ["30", "== 3", "< fast", "ratio", "< 1,", "<= 1.5 ratio <= 5"])
def test_parse_target_refuses_what_it_cannot_read(bad: str) -> None:
    with pytest.raises(ValueError, match="target"):
        parse_target(bad)


@pytest.mark.parametrize(("value", "target", "verdict"), [
    (30.0, "< 30", "SLOW"), (30.0, "<= 30", "OK"), (29.9, "< 30", "OK"),
    (150.0, "> 150", "SLOW"), (150.0, ">= 150", "OK"), (10.0, "", "-"), (None, "< 30", "FAILED"), (None, "", "FAILED"),
])
def test_verdict_on_the_value(value: float | None, target: str, verdict: str) -> None:
    assert Row("m", value, "ms", target).verdict() == verdict


def test_verdict_with_a_ratio_clause_needs_both_clauses_and_a_baseline() -> None:
    assert Row("m", 1.2, "s", "<= 1.5, ratio <= 5", baseline=0.3).verdict() == "OK"
    assert Row("m", 1.2, "s", "<= 1.5, ratio <= 5", baseline=0.2).verdict() == "SLOW"   # ratio 6
    assert Row("m", 1.6, "s", "<= 1.5, ratio <= 5", baseline=1.0).verdict() == "SLOW"
    assert Row("m", 1.2, "s", "<= 1.5, ratio <= 5").verdict() == "FAILED"               # no baseline measured
    assert Row("m", 1.2, "s", "ratio <= 5", baseline=0.0).verdict() == "FAILED"


def test_ratio() -> None:
    assert Row("m", 3.0, "s", baseline=1.5).ratio() == 2.0
    assert Row("m", 3.0, "s").ratio() is None
    assert Row("m", None, "s", baseline=1.5).ratio() is None
    assert Row("m", 3.0, "s", baseline=0.0).ratio() is None


@given(st.floats(-1e6, 1e6), st.floats(-1e6, 1e6), st.sampled_from(["<", "<=", ">", ">="]))
def test_verdict_agrees_with_the_comparison(value: float, limit: float, op: str) -> None:
    expected = {"<": value < limit, "<=": value <= limit, ">": value > limit, ">=": value >= limit}[op]
    assert Row("m", value, "", f"{op} {limit!r}").verdict() == ("OK" if expected else "SLOW")


def test_row_round_trips_through_its_dict() -> None:
    row = Row("create", 1.25, "s", "<= 1.5, ratio <= 5", "n=5", "1+100 VMs", 0.5)
    data = row.to_dict()
    assert data["ratio"] == 2.5 and data["verdict"] == "OK"
    assert Row.from_dict(json.loads(json.dumps({"part": "create", **data}))) == row


def test_fmt_keeps_about_three_digits() -> None:
    assert [fmt(None), fmt(0), fmt(1234.4), fmt(31.26), fmt(2.434), fmt(0.0042)] == ["-", "0.00", "1234", "31.3",
                                                                                      "2.43", "0.0042"]


def test_table_has_a_part_column_when_parts_are_given() -> None:
    rows = [Row("x", 2.0, "s", "< 3", size="1k VMs", baseline=1.0)]
    plain, with_part = table(rows).splitlines(), table(rows, ["sim"]).splitlines()
    assert plain[0].split() == ["METRIC", "SIZE", "RESULT", "TARGET", "BASELINE", "RATIO", "VERDICT", "NOTE"]
    assert with_part[0].split()[0] == "PART"
    assert with_part[2].split() == ["sim", "x", "1k", "VMs", "2.00", "s", "<", "3", "1.00", "s", "2.00x", "OK", "-"]


# ------------------------------------------------------------------ the record

def test_record_shape() -> None:
    rec = _record(_parts())
    assert set(rec) == {"schema", "mode", "date", "machine", "commit", "dirty", "load", "seconds", "parts", "rows",
                        "failed"}
    assert (rec["schema"], rec["mode"], rec["date"], rec["seconds"]) == (1, "quick", "2026-11-30T09:12:03Z", 81.2)
    assert rec["load"] == {"start": [1.5, 1.0, 0.5], "end": [2.25, 1.1, 0.6]}
    assert rec["parts"] == [{"name": "sim", "seconds": 3.2, "error": None},
                            {"name": "rq", "seconds": 1.0, "error": "RuntimeError: no worker"}]
    assert [(r["part"], r["name"], r["verdict"]) for r in rec["rows"]] == [
        ("sim", "allocate", "-"), ("sim", "a | b", "SLOW"), ("rq", "rq FAILED", "FAILED")]
    assert rec["rows"][1]["ratio"] == 4.0 and rec["rows"][1]["baseline"] == 0.5
    assert rec["failed"] == 1
    json.dumps(rec)   # JSON-ready as built


def test_write_gives_the_run_file_and_latest_with_the_same_content(tmp_path: Path) -> None:
    rec = _record(_parts(), mode="full")
    own, latest = record.write(rec, tmp_path)
    assert (own.name, latest.name) == ("2026-11-30T091203Z-full.json", "latest-full.json")
    assert own.read_text() == latest.read_text()
    assert record.load(latest) == rec
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2026-11-30T091203Z-full.json", "latest-full.json"]
    assert record.write(rec, tmp_path) == (own, latest)   # twice: the same two files


def test_load_refuses_what_is_not_a_record(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"schema": 99, "rows": []}))
    with pytest.raises(ValueError, match="not a benchmark record"):
        record.load(path)


# ------------------------------------------------------------------ parts

def test_select_parts() -> None:
    assert run.select("") == list(run.PARTS)
    assert run.select("rq, sim") == ["sim_bench", "rq_bench"]          # in PARTS order
    assert run.select("stack_bench") == ["stack_bench"]
    with pytest.raises(ValueError, match="unknown part.*nope"):
        run.select("sim,nope")


def test_every_part_imports_and_has_rows_of_workdir_and_quick() -> None:
    import importlib
    import inspect

    for module in run.PARTS:
        fn = importlib.import_module(f"bench.{module}").rows
        inspect.signature(fn).bind(Path("w"), True)   # raises TypeError if rows(workdir, quick) does not fit


def _fake_part(monkeypatch: pytest.MonkeyPatch, name: str, rows) -> None:  # type: ignore[no-untyped-def]
    module = types.ModuleType(f"bench.{name}")
    module.rows = rows  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, f"bench.{name}", module)


def test_a_part_that_raises_gives_one_failed_row(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def boom(workdir: Path, quick: bool) -> list[Row]:
        raise RuntimeError("simulator did not start")
    _fake_part(monkeypatch, "boom_bench", boom)
    result = run.run_part("boom_bench", tmp_path, True)
    assert result.name == "boom" and result.error == "RuntimeError: simulator did not start"
    assert [(r.name, r.verdict(), r.note) for r in result.rows] == [
        ("boom FAILED", "FAILED", "RuntimeError: simulator did not start")]


@pytest.mark.parametrize(("rows", "error"), [([], "returned no rows"), ([Row("x", 1.0, "s", "fast")], "target"),
                                             (["x"], "not a Row")])
def test_a_part_that_gives_nothing_readable_fails(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                  rows: list, error: str) -> None:
    _fake_part(monkeypatch, "odd_bench", lambda workdir, quick: rows)
    result = run.run_part("odd_bench", tmp_path, False)
    assert result.error is not None and error in result.error
    assert [r.verdict() for r in result.rows] == ["FAILED"]


def test_a_part_past_its_time_limit_fails_and_the_alarm_is_cleared(monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path) -> None:
    import signal

    def slow(workdir: Path, quick: bool) -> list[Row]:
        try:
            signal.raise_signal(signal.SIGALRM)   # what the timer does once the limit is reached
        except Exception:                       # a part's own broad handler does not swallow the timeout
            return [Row("x", 1.0, "s")]
        return [Row("x", 1.0, "s")]
    _fake_part(monkeypatch, "slow_bench", slow)
    previous = signal.getsignal(signal.SIGALRM)
    result = run.run_part("slow_bench", tmp_path, True, limit=3600)
    assert result.error == "PartTimeout: still running after 3600 s"
    assert [r.name for r in result.rows] == ["slow FAILED"]
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    assert signal.getsignal(signal.SIGALRM) == previous


def test_a_part_gets_its_own_directory_and_the_mode(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen = []

    def ok(workdir: Path, quick: bool) -> list[Row]:
        seen.append((workdir, quick))
        assert workdir.is_dir()                   # the harness makes each part's directory (a part may mkdtemp in it)
        return [Row("x", 1.0, "s", "< 2")]
    _fake_part(monkeypatch, "ok_bench", ok)
    result = run.run_part("ok_bench", tmp_path, True)
    assert seen == [(tmp_path / "ok", True)]
    assert result.error is None and [r.verdict() for r in result.rows] == ["OK"]


# ------------------------------------------------------------------ the README section

def test_render_gives_the_summary_and_one_table_line_per_row() -> None:
    lines = report.render(_record(_parts()), "bench/results/latest-quick.json").splitlines()
    assert lines[0].startswith("<!-- generated by bench/report.py from bench/results/latest-quick.json")
    assert lines[1] == ("Quick run (`bench/run.py --quick`), 2026-11-30 09:12 UTC, commit `aaaaaaaaaa`, "
                        "2 cores, test CPU; load average 1.50 at start, 2.25 at end; 81 s.")
    assert lines[3] == "| part | metric | size | result | target | baseline | ratio | verdict | note |"
    assert lines[4] == "|" + "|".join([" --- "] * 9) + "|"
    assert lines[5:] == [
        "| sim | allocate | 300 VMs | 950 VMs/s | - | - | - | - | - |",
        "| sim | a \\| b | 1+100 VMs | 2.00 s | <= 1.5, ratio <= 5 | 0.50 s | 4.00x | SLOW | n=3 |",
        "| rq | rq FAILED | - | - | - | - | - | FAILED | RuntimeError: no worker |"]


def test_splice_replaces_only_between_the_markers() -> None:
    text = f"# Title\n\n## Benchmarks\n{report.BEGIN}\nold table\nold line\n{report.END}\n\nTail.\n"
    out = report.splice(text, "new table\n")
    assert out == f"# Title\n\n## Benchmarks\n{report.BEGIN}\nnew table\n{report.END}\n\nTail.\n"
    assert report.splice(out, "new table\n") == out
    assert report.splice(out, "no newline") == out.replace("new table", "no newline")


@pytest.mark.parametrize("text", ["no markers\n", f"{report.END}\n{report.BEGIN}\n",
                                  f"{report.BEGIN}\n{report.BEGIN}\n{report.END}\n", f"{report.BEGIN}\nonly\n"])
def test_splice_refuses_without_one_pair_of_markers(text: str) -> None:
    with pytest.raises(ValueError, match="want one line"):
        report.splice(text, "x\n")


def test_report_main_updates_the_readme_from_a_record(tmp_path: Path) -> None:
    rec_path, _ = record.write(_record(_parts()), tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{report.BEGIN}\n{report.END}\nend\n")
    assert report.main([str(rec_path), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith(f"intro\n{report.BEGIN}\n<!-- generated") and text.endswith(f"{report.END}\nend\n")
    assert "| sim | allocate | 300 VMs | 950 VMs/s |" in text
    readme.write_text("no markers\n")
    assert report.main([str(rec_path), "--readme", str(readme)]) == 1
    assert readme.read_text() == "no markers\n"


def test_main_writes_the_record_and_fails_only_on_failed_rows(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    def slow_but_measured(workdir: Path, quick: bool) -> list[Row]:
        return [Row("rate", 10.0, "jobs/s", ">= 150", size="1 worker")]

    def boom(workdir: Path, quick: bool) -> list[Row]:
        raise RuntimeError("no redis-server")
    _fake_part(monkeypatch, "slowpoke_bench", slow_but_measured)
    _fake_part(monkeypatch, "boom_bench", boom)
    monkeypatch.setattr(run, "PARTS", ("slowpoke_bench", "boom_bench"))
    monkeypatch.setattr(record, "git_commit", lambda root=record.ROOT: ("f" * 40, True))
    results, work = tmp_path / "results", tmp_path / "work"

    def mkdtemp(prefix: str = "") -> str:
        work.mkdir(exist_ok=True)
        return str(work)
    monkeypatch.setattr(run.tempfile, "mkdtemp", mkdtemp)

    assert run.main(["--quick", "--only", "slowpoke", "--results", str(results)]) == 0   # SLOW does not fail
    first = record.load(results / "latest-quick.json")
    assert [(r["part"], r["verdict"]) for r in first["rows"]] == [("slowpoke", "SLOW")]
    assert (first["mode"], first["commit"], first["dirty"], first["failed"]) == ("quick", "f" * 40, True, 0)

    assert run.main(["--quick", "--results", str(results)]) == 1
    second = record.load(results / "latest-quick.json")
    assert [(r["part"], r["name"], r["verdict"]) for r in second["rows"]] == [
        ("slowpoke", "rate", "SLOW"), ("boom", "boom FAILED", "FAILED")]
    assert second["parts"][1]["error"] == "RuntimeError: no redis-server" and second["failed"] == 1
    out = capsys.readouterr().out
    assert "boom FAILED" in out and "record: " in out and f"logs: {work}" in out   # kept after a failure
    with pytest.raises(SystemExit):
        run.main(["--only", "nope", "--results", str(results)])


def test_report_main_without_a_record_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"{report.BEGIN}\n{report.END}\n")
    assert report.main([str(tmp_path / "missing.json"), "--readme", str(readme)]) == 1
    assert "missing.json" in capsys.readouterr().err
    assert readme.read_text() == f"{report.BEGIN}\n{report.END}\n"


def test_newest_is_the_later_of_the_two_latest_records(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        report.newest(tmp_path)
    full = _record(_parts(), mode="full")
    quick = {**_record(_parts(), mode="quick"), "date": "2026-12-01T00:00:00Z"}
    record.write(full, tmp_path)
    assert report.newest(tmp_path).name == "latest-full.json"
    record.write(quick, tmp_path)
    assert report.newest(tmp_path).name == "latest-quick.json"
