"""A second factor for signing in and for key actions: TOTP apps, security keys
and passkeys (WebAuthn), and one-time recovery codes."""
