"""The viewer's rows written by the tag are the template's rows, escaping included."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from django.template import Context, Template
from django.utils import timezone
from hypothesis import given
from hypothesis import strategies as st

from audit.models import ActorKind, AuditEvent, Outcome
from audit.templatetags.audit_rows import audit_row, audit_rows

# The row as the template language wrote it before the tag: the reference.
REFERENCE = Template(
    """<tr data-testid="audit-row">
        <td>{{ e.seq }}</td>
        <td><time datetime="{{ e.time|date:'c' }}">{{ e.time|date:"Y-m-d H:i:s" }}</time></td>
        <td>{{ e.actor_display|default:e.actor_kind }}{% if e.actor_kind != 'user' %} <span class="muted">({{ e.get_actor_kind_display }})</span>{% endif %}</td>
        <td><code>{{ e.action }}</code></td>
        <td>{{ e.target }}</td>
        <td><span class="outcome outcome-{{ e.outcome }}">{{ e.get_outcome_display }}</span>{% if e.reason %}<br><span class="muted">{{ e.reason }}</span>{% endif %}</td>
        <td>{{ e.ip|default:"" }}</td>
      </tr>"""  # noqa: E501
)

HOSTILE = "<script>alert('x')</script> & \"quoted\" `back` =cmd|calc"
text = st.text(st.characters(blacklist_categories=["Cs"]), max_size=40)


def event(**fields) -> AuditEvent:
    values = {
        "seq": 7,
        "time": datetime(2026, 3, 1, 12, 30, 5, 123456, tzinfo=UTC),
        "actor_kind": ActorKind.USER,
        "actor_display": "ann@acme.test (Owner)",
        "action": "key.test",
        "target": "arn:aws:kms:eu-west-1:1:key/k",
        "outcome": Outcome.SUCCESS,
        "reason": "",
        "ip": "203.0.113.9",
    }
    return AuditEvent(**{**values, **fields})


def reference(e: AuditEvent) -> str:
    return REFERENCE.render(Context({"e": e}))


def test_hostile_text_in_every_cell_is_escaped_as_the_template_escaped_it() -> None:
    e = event(
        actor_kind=ActorKind.SYSTEM,
        actor_display=HOSTILE,
        action=HOSTILE,
        target=HOSTILE,
        outcome=Outcome.FAILURE,
        reason=HOSTILE,
    )
    row = audit_row(e)
    assert "<script>" not in row
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &quot;quoted&quot;" in row
    assert row.strip() == reference(e)


def test_every_kind_and_outcome_and_an_empty_actor_and_ip() -> None:
    for kind in [*ActorKind.values, "retired-kind"]:
        for outcome in [*Outcome.values, "odd"]:
            for actor, ip, reason in (("", None, ""), ("bob@acme.test", "2001:db8::1", "why")):
                e = event(
                    actor_kind=kind, outcome=outcome, actor_display=actor, ip=ip, reason=reason
                )
                assert audit_row(e).strip() == reference(e), (kind, outcome, actor)


def test_times_are_shown_in_the_current_time_zone_as_the_date_filter_shows_them() -> None:
    e = event(time=datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC) - timedelta(microseconds=1))
    with timezone.override("Europe/Paris"):
        row = audit_row(e)
        assert row.strip() == reference(e)
    assert 'datetime="2027-01-01T00:59:58.999999+01:00">2027-01-01 00:59:58<' in row


@given(
    actor=text,
    action=text,
    target=text,
    reason=text,
    seq=st.integers(min_value=1, max_value=2**62),
    kind=st.sampled_from(ActorKind.values),
    outcome=st.sampled_from(Outcome.values),
)
def test_any_text_gives_the_template_row(actor, action, target, reason, seq, kind, outcome) -> None:
    e = event(
        actor_display=actor,
        action=action,
        target=target,
        reason=reason,
        seq=seq,
        actor_kind=kind,
        outcome=outcome,
    )
    assert audit_row(e).strip() == reference(e)


def test_the_rows_are_one_safe_string_in_order() -> None:
    rows = audit_rows([event(seq=3), event(seq=2, target="<b>")])
    assert hasattr(rows, "__html__")
    assert rows.index("<td>3</td>") < rows.index("<td>2</td>")
    assert "&lt;b&gt;" in rows
    assert audit_rows([]) == ""
