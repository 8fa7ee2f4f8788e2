from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from console import datadir
from console.metrics import forget_exited_processes


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


class Command(BaseCommand):
    help = (
        "Run the console with embedded defaults: migrate, seed the demo, then the web "
        "server, a Celery worker and Celery beat. Ctrl-C stops all three."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--port", type=int, default=None)

    def handle(self, *args: Any, port: int | None = None, **options: Any) -> None:
        port = port or int(os.environ.get("KEYWARD_PORT", "8000"))
        if not 1 <= port <= 65535:
            raise CommandError(f"KEYWARD_PORT={port} is not a TCP port")
        # Owner-only data folder and database, also when an older version made them.
        datadir.secure_embedded_storage(
            settings.DATA_DIR, datadir.sqlite_file(settings.DATABASES["default"])
        )
        # Metric files of an earlier run's processes: its totals are not this run's.
        forget_exited_processes(settings.KEYWARD_METRICS_DIR)
        call_command("migrate", interactive=False, verbosity=0)
        call_command("seed_demo")
        data = settings.DATA_DIR
        python = sys.executable
        commands = {
            "web": [
                python,
                "-m",
                "gunicorn",
                "--config",
                "python:console.gunicorn",
                "console.wsgi:application",
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                "2",
                "--threads",
                "4",
            ],
            "worker": [
                python,
                "-m",
                "celery",
                "-A",
                "console",
                "worker",
                "--loglevel",
                "INFO",
                "--concurrency",
                "2",
                "--hostname",
                "embedded@%h",
            ],
            "beat": [
                python,
                "-m",
                "celery",
                "-A",
                "console",
                "beat",
                "--loglevel",
                "INFO",
                "--schedule",
                str(data / "celerybeat-schedule"),
                "--pidfile",
                "",
            ],
        }
        processes: dict[str, subprocess.Popen[bytes]] = {}
        # A SIGTERM (from a supervisor or `timeout`) stops everything like Ctrl-C does.
        signal.signal(signal.SIGTERM, _interrupt)
        try:
            for name, command in commands.items():
                processes[name] = subprocess.Popen(command, start_new_session=True)
            self.stdout.write(
                self.style.SUCCESS(
                    f"\nKeyward is running at http://127.0.0.1:{port}/  (Ctrl-C stops it)\n"
                )
            )
            while all(p.poll() is None for p in processes.values()):
                time.sleep(0.5)
            failed = [n for n, p in processes.items() if p.poll() is not None]
            raise CommandError(f"{', '.join(failed)} stopped unexpectedly; stopping the rest")
        except KeyboardInterrupt:
            self.stdout.write("\nStopping…")
        finally:
            for process in processes.values():
                if process.poll() is None:
                    # The leader shuts its own children down (warm shutdown for Celery).
                    process.terminate()
            deadline = time.monotonic() + 15
            for process in processes.values():
                try:
                    process.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
