"""The command line (help, version, exit statuses, stdout kept clean for ExaBGP) and
the structured logger."""

from __future__ import annotations

import gc
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# With only files from tests/unit selected, pytest puts tests/unit on sys.path, and
# tests/unit/checks (no __init__.py) would then shadow the real ``checks`` package.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import announcer
from announcer import cli
from announcer.log import Logger

REPO = Path(__file__).resolve().parents[2]
VENV_ANNOUNCER = REPO / ".venv" / "bin" / "announcer"
COMMAND = [str(VENV_ANNOUNCER)] if VENV_ANNOUNCER.exists() else [sys.executable, "-m", "announcer"]

GOOD = """
[[service]]
name = "web"
prefixes = ["192.0.2.10/32", "2001:db8::10/128"]
[[service.checks]]
type = "file"
path = "/run/web.ok"
"""


def run_cli(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    """The real command in a child process, with a closed-after-input stdin."""
    return subprocess.run(
        [*COMMAND, *args], input=stdin, capture_output=True, timeout=60, check=False
    )


# ---------------------------------------------------------------- help and version


def test_help_exits_0_and_documents_exit_statuses_and_commands(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--help exits 0 and lists the subcommands and every exit status."""
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in ("run", "check-config", "print-config"):
        assert command in out
    assert "exit status:" in out
    for status in ("0  success", "1  refused or failed", "2  usage or configuration error"):
        assert status in out
    assert "3  the daemon is not reachable" in out
    assert "stdout is reserved for ExaBGP" in out


@pytest.mark.parametrize("command", ["run", "check-config", "print-config"])
def test_subcommand_help_exits_0(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Each subcommand has its own --help that exits 0."""
    with pytest.raises(SystemExit) as info:
        cli.main([command, "--help"])
    assert info.value.code == 0
    assert f"usage: announcer {command}" in capsys.readouterr().out


def test_no_command_exits_2_with_help_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    """Without a command the help goes to stderr and the status is 2 (usage error)."""
    assert cli.main([]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "usage: announcer" in err
    assert "check-config" in err


def test_unknown_command_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown command is a usage error: exit 2, message on stderr."""
    with pytest.raises(SystemExit) as info:
        cli.main(["frobnicate"])
    assert info.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "invalid choice: 'frobnicate'" in err


def test_version_prints_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    """--version prints `announcer <announcer.__version__>` and exits 0."""
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"announcer {announcer.__version__}\n"


IMPORTS_OF_A_CONTROL_COMMAND = """
import sys
from announcer import cli
status = cli.main(sys.argv[1:])
heavy = ("pydantic", "checks", "announcer.checks", "announcer.config", "announcer.control",
         "announcer.control_server", "announcer.daemon")
print(status, sorted(m for m in sys.modules if m.startswith(heavy)))
"""


@pytest.mark.parametrize("command", ["status", "drain", "undrain", "reload", "check"])
def test_control_commands_import_neither_pydantic_nor_the_daemon(command: str) -> None:
    """An operator's command stays quick to start: it imports neither pydantic (the config
    models), nor the checks, nor the daemon's side of the control socket."""
    # A path too long for a Unix socket: exit 3 at once (a missing one is waited for).
    argv = [command, "--socket", "/" + "x" * 200]
    if command in ("drain", "undrain"):
        argv.append("--all")
    done = subprocess.run(
        [sys.executable, "-c", IMPORTS_OF_A_CONTROL_COMMAND, *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
        env={**os.environ, "ANNOUNCER_CONFIG": "", "ANNOUNCER_SOCKET": ""},
    )
    assert done.stdout == "3 []\n", done.stderr  # 3: the daemon is not reachable


# ---------------------------------------------------------------- check-config


def test_check_config_success_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A valid config exits 0 and says ok with the counts of services and prefixes."""
    path = tmp_path / "announcer.toml"
    path.write_text(GOOD, encoding="utf-8")
    assert cli.main(["check-config", str(path)]) == 0
    out, err = capsys.readouterr()
    assert (out, err) == (f"{path}: ok (1 service, 2 prefixes)\n", "")


def test_check_config_uses_announcer_config_env(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a path, check-config reads $ANNOUNCER_CONFIG."""
    path = tmp_path / "from-env.toml"
    path.write_text(GOOD, encoding="utf-8")
    monkeypatch.setenv("ANNOUNCER_CONFIG", str(path))
    assert cli.main(["check-config"]) == 0
    assert capsys.readouterr().out.startswith(f"{path}: ok ")


# ---------------------------------------------------------------- run keeps stdout clean


def test_run_with_invalid_config_exits_2_and_writes_nothing_to_stdout(tmp_path: Path) -> None:
    """`announcer run` with a bad config exits 2, explains on stderr and writes not one
    byte to stdout (which ExaBGP would read as commands)."""
    path = tmp_path / "announcer.toml"
    path.write_text(GOOD.replace('type = "file"', 'type = "smtp"'), encoding="utf-8")
    proc = run_cli("run", "--config", str(path), stdin=b"done\n")
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == b""
    assert f"{path}: service 'web': checks[0]: unknown check type 'smtp'" in proc.stderr.decode()


def test_run_with_missing_config_writes_nothing_to_stdout(tmp_path: Path) -> None:
    """`announcer run` with no config file exits 2 and stdout stays empty."""
    path = tmp_path / "missing.toml"
    proc = run_cli("run", "--config", str(path))
    assert proc.returncode == 2
    assert proc.stdout == b""
    assert proc.stderr.decode() == f"announcer: {path}: no such file\n"


def test_run_with_bad_option_writes_nothing_to_stdout() -> None:
    """A usage error on `run` exits 2 with the usage on stderr only."""
    proc = run_cli("run", "--no-such-option")
    assert proc.returncode == 2
    assert proc.stdout == b""
    assert b"unrecognized arguments: --no-such-option" in proc.stderr


def test_run_says_once_at_start_which_https_checks_skip_verification(tmp_path: Path) -> None:
    """An HTTPS check with verify_tls = false is named in one warning at start (not one per
    check run); a verifying one is not."""
    path = tmp_path / "announcer.toml"
    path.write_text(
        f'state_dir = "{tmp_path / "state"}"\ncontrol_socket = ""\ninclude = ""\n'
        '[[service]]\nname = "web"\nprefixes = ["192.0.2.10/32"]\n'
        '[[service.checks]]\ntype = "http"\nurl = "https://127.0.0.1:9/"\nverify_tls = false\n'
        '[[service]]\nname = "api"\nprefixes = ["192.0.2.11/32"]\n'
        '[[service.checks]]\ntype = "http"\nurl = "https://127.0.0.1:9/"\n',
        encoding="utf-8",
    )
    proc = run_cli("run", "--config", str(path))
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.decode().splitlines() if "tls_unverified" in line]
    assert len(warnings) == 1, proc.stderr
    assert "service=web" in warnings[0] and "url=https://127.0.0.1:9/" in warnings[0]


def test_run_reports_config_errors_to_the_log_file(tmp_path: Path) -> None:
    """With --log-file the config problems go to that file; stdout stays empty."""
    path = tmp_path / "announcer.toml"
    path.write_text("bogus = 1\n", encoding="utf-8")
    log_file = tmp_path / "announcer.log"
    proc = run_cli("run", "--config", str(path), "--log-file", str(log_file))
    assert proc.returncode == 2
    assert proc.stdout == b""
    assert log_file.read_text(encoding="utf-8") == f"announcer: {path}: bogus: unknown key\n"


def _kept_then_broken(tmp_path: Path) -> tuple[Path, str]:
    """A config that loaded once (so a last good copy is kept in its state_dir), then got
    a byte that is not UTF-8; and the problem it has."""
    from announcer import config as cfg

    path = tmp_path / "announcer.toml"
    path.write_text(
        f'state_dir = "{tmp_path / "state"}"\ncontrol_socket = "{tmp_path / "c.sock"}"\n'
        f'maintenance_file = "{tmp_path / "maintenance"}"\ninclude = ""\n' + GOOD,
        encoding="utf-8",
    )
    cfg.save_last_good(cfg.load(path))
    good = path.read_bytes()
    path.write_bytes(good + b"# caf\xe9 in latin-1\n")
    line = len(good.splitlines()) + 1
    return path, f"{path}: not UTF-8 text: invalid byte 0xe9 at line {line}"


def test_check_config_refuses_a_bad_byte_even_with_a_last_good_config(tmp_path: Path) -> None:
    """check-config and print-config judge the file itself: exit 2 with one line naming the
    file and the byte, no traceback, although a last good config is kept."""
    path, problem = _kept_then_broken(tmp_path)
    for command in ("check-config", "print-config"):
        proc = run_cli(command, str(path))
        assert proc.returncode == 2, proc.stderr
        assert proc.stdout == b""
        assert proc.stderr.decode() == f"announcer: {problem}\n"


def test_run_with_a_broken_config_runs_on_the_last_good_one(tmp_path: Path) -> None:
    """`announcer run` on a file that does not load, with a last good config kept, does not
    exit 2 (ExaBGP would respawn it until it gives up and drops every route): it logs the
    problem and that it runs on the last good config, and runs until stdin closes."""
    path, problem = _kept_then_broken(tmp_path)
    proc = run_cli("run", "--config", str(path))
    assert proc.returncode == 0, proc.stderr
    errors = [_logfmt(line) for line in proc.stderr.decode().splitlines() if "level=error" in line]
    assert errors[0]["event"] == "config_invalid"
    assert errors[0]["config"] == str(path)
    assert errors[0]["problem"] == problem
    assert errors[1]["action"].startswith("running on the last good config")
    assert errors[1]["last_good"] == str(tmp_path / "state" / "last-good-config.json")
    assert "event=start services=1" in proc.stderr.decode()


def test_run_with_a_broken_config_and_no_last_good_one_exits_2(tmp_path: Path) -> None:
    """Without a last good config kept for this file there is nothing known to check: exit 2
    with the problem, stdout empty."""
    path, problem = _kept_then_broken(tmp_path)
    (tmp_path / "state" / "last-good-config.json").unlink()
    proc = run_cli("run", "--config", str(path), stdin=b"done\n")
    assert proc.returncode == 2
    assert proc.stdout == b""
    assert proc.stderr.decode() == f"announcer: {problem}\n"


# ---------------------------------------------------------------- the logger


def _logfmt(line: str) -> dict[str, str]:
    """Split one logfmt line into fields (values JSON-decoded when quoted)."""
    fields: dict[str, str] = {}
    decoder = json.JSONDecoder()
    i = 0
    while i < len(line):
        eq = line.index("=", i)
        key = line[i:eq]
        if line[eq + 1 : eq + 2] == '"':
            value, end = decoder.raw_decode(line, eq + 1)
        else:
            end = line.find(" ", eq + 1)
            end = len(line) if end == -1 else end
            value = line[eq + 1 : end]
        fields[key] = value
        i = end + 1
    return fields


def test_logfmt_one_event_per_line_with_quoting() -> None:
    """logfmt writes one line per event: ts, level, event, then the fields; values with
    spaces, quotes, =, backslashes or line breaks are JSON-quoted, plain ones are bare;
    None fields are left out."""
    stream = io.StringIO()
    log = Logger(stream)
    log.info(
        "route",
        service="web",
        why='said "no" twice',
        note="a b",
        expr="x=1",
        path="C:\\x",
        multi="one\ntwo",
        cr="carriage\rreturn",
        empty="",
        count=3,
        ok=True,
        gone=None,
    )
    log.warning("second event")
    text = stream.getvalue()
    lines = text.split("\n")
    assert lines[-1] == ""
    assert len(lines) == 3
    assert "\r" not in text
    first = lines[0]
    assert first.startswith("ts=")
    assert f" level=info pid={os.getpid()} event=route service=web " in first
    assert 'why="said \\"no\\" twice"' in first
    assert ' note="a b" ' in first
    assert ' expr="x=1" ' in first
    assert first.endswith(" count=3 ok=true")
    assert "gone" not in first
    fields = _logfmt(first)
    assert fields["why"] == 'said "no" twice'
    assert fields["path"] == "C:\\x"
    assert fields["multi"] == "one\ntwo"
    assert fields["cr"] == "carriage\rreturn"
    assert fields["empty"] == ""
    assert _logfmt(lines[1])["event"] == "second event"
    assert _logfmt(lines[1])["level"] == "warning"


def test_logfmt_timestamp_is_utc_with_milliseconds() -> None:
    """ts is ISO 8601 UTC with milliseconds and a Z."""
    stream = io.StringIO()
    Logger(stream).info("x")
    ts = _logfmt(stream.getvalue().rstrip("\n"))["ts"]
    assert len(ts) == len("2026-11-26T03:40:00.123Z")
    assert ts[10] == "T"
    assert ts[19] == "."
    assert ts.endswith("Z")


def test_json_one_object_per_line() -> None:
    """json writes one JSON object per line with ts, level, event and the fields as
    they are (quotes and line breaks escaped, None kept as null)."""
    stream = io.StringIO()
    log = Logger(stream, fmt="json")
    log.error("write_failed", service="web", why='pipe "closed"\nagain', count=2, gone=None)
    log.info("x y")
    lines = stream.getvalue().split("\n")
    assert len(lines) == 3
    assert lines[-1] == ""
    first = json.loads(lines[0])
    assert first["level"] == "error"
    assert first["event"] == "write_failed"
    assert first["why"] == 'pipe "closed"\nagain'
    assert (first["count"], first["gone"], first["service"]) == (2, None, "web")
    assert list(first)[:4] == ["ts", "level", "pid", "event"]
    assert first["pid"] == os.getpid()
    assert json.loads(lines[1])["event"] == "x y"


@pytest.mark.parametrize("fmt", ["logfmt", "json"])
def test_values_that_are_not_json_are_written_as_text(fmt: str) -> None:
    """A Path or an exception as a field value is written with str(), in both formats,
    instead of raising."""
    stream = io.StringIO()
    log = Logger(stream, fmt=fmt)  # type: ignore[arg-type]
    log.info("x", path=Path("/run/web ok"), err=OSError("boom"))
    [line] = stream.getvalue().splitlines()
    fields = json.loads(line) if fmt == "json" else _logfmt(line)
    assert fields["path"] == "/run/web ok"
    assert fields["err"] == "boom"


def test_level_filter() -> None:
    """Events below the logger's level are dropped."""
    stream = io.StringIO()
    log = Logger(stream, level="warning")
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    events = [_logfmt(line)["event"] for line in stream.getvalue().splitlines()]
    assert events == ["w", "e"]


def test_logger_never_raises_on_a_closed_stream() -> None:
    """Logging to a closed stream is silently dropped."""
    stream = io.StringIO()
    stream.close()
    Logger(stream).error("lost")


def test_settle_memory_freezes_what_start_up_built_and_raises_the_threshold() -> None:
    """Before serving, the daemon takes every object built so far out of the collector's
    way (gc.freeze) and collects generation 0 after 10,000 new objects, not 700."""
    before = gc.get_threshold()
    try:
        cli.settle_memory()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == cli.GC_THRESHOLD
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
