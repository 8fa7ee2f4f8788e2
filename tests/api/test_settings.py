from __future__ import annotations

from tests.console.test_settings import production_env, run_manage  # noqa: F401


def test_production_refuses_the_benchmark_plaintext_switch(
    production_env: dict[str, str],  # noqa: F811
) -> None:
    result = run_manage({**production_env, "KEYWARD_API_BENCH_PLAINTEXT": "true"}, "check")
    assert result.returncode != 0
    assert "KEYWARD_API_BENCH_PLAINTEXT is for benchmarks" in result.stderr
    assert run_manage(production_env, "check").returncode == 0
