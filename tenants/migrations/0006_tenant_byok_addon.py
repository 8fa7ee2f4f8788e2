from typing import Any

from django.db import migrations, models

from tenants.addon import grant_addon_to_own_key_tenants


def grant(apps: Any, schema_editor: Any) -> None:
    grant_addon_to_own_key_tenants(
        apps.get_model("tenants", "Tenant"), apps.get_model("keys", "KeySource")
    )


class Migration(migrations.Migration):
    dependencies = [
        ("tenants", "0005_support_access"),
        ("keys", "0008_reencryption_jobs_to_records"),
    ]

    operations = [
        migrations.AddField(
            model_name="tenant",
            name="byok_addon",
            field=models.BooleanField(default=False, verbose_name="BYOK add-on"),
        ),
        migrations.RunPython(grant, migrations.RunPython.noop),
    ]
