"""The console app's models: the second factor's, kept in their own package."""

from console.mfa.models import Factor, FactorKind, RecoveryCode

__all__ = ["Factor", "FactorKind", "RecoveryCode"]
