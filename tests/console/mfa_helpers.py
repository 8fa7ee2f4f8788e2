"""TOTP codes computed from an enrolled secret, as an authenticator app would."""

from __future__ import annotations

import time

import pyotp


def code_now(secret: str, *, offset_steps: int = 0) -> str:
    compact = "".join(secret.split())
    return pyotp.TOTP(compact).at(int(time.time()) + 30 * offset_steps)


def code_at_step(secret: str, step: int) -> str:
    return pyotp.TOTP("".join(secret.split())).at(step * 30)
