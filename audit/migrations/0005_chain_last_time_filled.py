"""Fill `AuditChain.last_time` for chains that had events before it existed.

`record` keeps an event's time from going below the chain's last one, and the
viewer's date filter relies on it (times never decrease along a chain, so a
date range is a range of sequence numbers). A chain whose head was made before
0003 had no last time: its next event was held to nothing. From here on it is
held to its newest event's time.
"""

from django.db import migrations

FILL = """
UPDATE audit_auditchain
SET last_time = (
    SELECT MAX(e.time) FROM audit_auditevent e WHERE e.chain = audit_auditchain.key
)
WHERE last_time IS NULL
"""


class Migration(migrations.Migration):
    dependencies = [
        ("audit", "0004_stream_destination"),
    ]

    operations = [migrations.RunSQL(FILL, reverse_sql=migrations.RunSQL.noop)]
