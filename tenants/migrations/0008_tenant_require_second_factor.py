from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("tenants", "0007_support_list_indexes"),
    ]

    # Tenants that exist already keep working as before (off): turning it on
    # would send every key administrator without a factor to enrol before their
    # next key action, without their owner having chosen it. Owners turn it on
    # on the Members page; tenants created from now on start with it on.
    operations = [
        migrations.AddField(
            model_name="tenant",
            name="require_second_factor",
            field=models.BooleanField(default=False),
        ),
        migrations.AlterField(
            model_name="tenant",
            name="require_second_factor",
            field=models.BooleanField(default=True),
        ),
    ]
