from __future__ import annotations

import pytest

from tenants.models import Role
from tenants.permissions import ROLE_PERMS, SUPPORT_PERMS, Perm


@pytest.mark.parametrize("perms", [*ROLE_PERMS.values(), SUPPORT_PERMS])
def test_who_may_read_the_audit_trail_may_export_it(perms) -> None:
    assert (Perm.VIEW_AUDIT in perms) == (Perm.EXPORT_AUDIT in perms)


def test_every_role_but_the_viewer_reads_the_audit_trail() -> None:
    readers = {role for role, perms in ROLE_PERMS.items() if Perm.VIEW_AUDIT in perms}
    assert readers == {Role.OWNER, Role.KEY_ADMIN, Role.AUDITOR}
    assert Perm.VIEW_AUDIT not in SUPPORT_PERMS  # the trail names people: not metadata
