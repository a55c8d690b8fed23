"""What `mailwright serve` prints while mail arrives: quiet by default, every SMTP command with
`--log-level debug` (aiosmtpd logs each at INFO)."""

from __future__ import annotations

import signal
import smtplib
from email.message import EmailMessage
from pathlib import Path

from tests.security.serveproc import ServeProcess, free_port


def _capture(home: Path, *args: str) -> str:
    port = free_port()
    with ServeProcess(home, "--sandbox-port", str(port), *args) as serve:
        for n in range(5):
            message = EmailMessage()
            message["From"], message["To"], message["Subject"] = "a@example.org", "b@example.org", f"#{n}"
            message.set_content("hello")
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
                smtp.send_message(message)
    return serve.stdout + serve.stderr


def test_the_sandbox_is_quiet_unless_asked(tmp_path: Path) -> None:
    quiet = _capture(tmp_path / "quiet")
    assert "mail.log" not in quiet and "MAIL FROM" not in quiet
    assert len(quiet.splitlines()) < 30, quiet  # start-up lines, not a line per SMTP command
    loud = _capture(tmp_path / "loud", "--log-level", "debug")
    assert "mail.log" in loud


def test_ctrl_c_stops_serve_in_order_with_exit_0(tmp_path: Path) -> None:
    """`make run` ends with Ctrl-C: serve must exit 0 then (uvicorn raised the SIGINT again, so make
    printed "Error 130")."""
    serve = ServeProcess(tmp_path / "home").start()
    serve._proc.send_signal(signal.SIGINT)
    code = serve._proc.wait(timeout=60)  # it stops by itself: no SIGTERM from stop()
    serve.stop()
    assert code == 0, serve.stderr[-2000:]
    assert "Traceback" not in serve.stderr
