"""fluxhess.compare and the `fluxhess compare` command, checked against independent computations."""

import numpy as np
import pytest

import fluxhess as fh
import reference as ref
from fluxhess.cli import main as cli_main
from fluxhess.compare import differences, parse_model

MODEL = fh.Chain(fh.Dense(2, 5, "tanh"), fh.Dense(5, 1, "sigmoid"))


def _data(n=12, seed=0):
    rng = np.random.default_rng(seed)
    theta = MODEL.init(seed) + 0.1 * rng.normal(size=MODEL.num_params)
    X = rng.normal(size=(n, 2))
    Y = rng.uniform(size=(n, 1))
    return theta, X, Y


def test_differences_closed_form():
    A = np.array([[1.0, 2.0], [3.0, -4.0]])
    B = np.array([[1.0, 2.5], [3.0, -8.0]])
    assert differences(A, B) == (4.0, 0.5)
    assert differences(np.zeros(3), np.zeros(3)) == (0.0, 0.0)
    with pytest.raises(fh.InputError, match="shapes"):
        differences(np.zeros(2), np.zeros(3))


def test_report_numbers_match_independent_matrices():
    theta, X, Y = _data()
    loss = "binarycrossentropy"
    report = fh.compare(MODEL, theta, X, Y, loss=loss, agg="mean", backends=("jax",))
    expected = {
        "hessian": ref.jax_hessian(MODEL, theta, X, Y, loss, "mean"),
        "ggn": ref.linearized_ggn(MODEL, theta, X, Y, loss, "mean"),
        "empirical_fisher": ref.scale(loss, "mean", *Y.shape) * sum(np.outer(g, g) for g in ref.per_sample_gradients(MODEL, theta, X, Y, loss)),
        "input_hessian": ref.input_hessian(MODEL, theta, X),
    }
    assert [q.name for q in report.quantities] == list(expected)
    for q in report.quantities:
        M = expected[q.name]
        (run,) = q.runs
        assert run.backend == "jax" and run.error is None and run.seconds > 0
        assert q.shape == M.shape
        eig = np.linalg.eigvalsh((M + np.swapaxes(M, -1, -2)) / 2)
        assert run.eig_min == pytest.approx(eig.min(), rel=1e-8, abs=1e-12)
        assert run.eig_max == pytest.approx(eig.max(), rel=1e-8, abs=1e-12)
        assert 0 <= run.symmetry_error < 1e-12
        assert q.pairs == []


def test_unavailable_backend_is_reported_with_its_reason():
    theta, X, Y = _data()
    reason = fh.backends()["julia"]
    if reason is None:
        pytest.skip("the julia backend is available here, so nothing is reported unavailable")
    report = fh.compare(MODEL, theta, X, Y, loss="mse")
    assert list(report.unavailable) == ["julia"] and reason in report.unavailable["julia"]
    text = str(report)
    assert "unavailable: julia" in text and "fewer than two backends ran" in text
    assert np.isnan(report.max_relative_difference())


def test_julia_and_jax_agree():
    reason = fh.backends()["julia"]
    if reason is not None:
        pytest.skip(f"julia backend unavailable: {reason}")
    theta, X, Y = _data()
    report = fh.compare(MODEL, theta, X, Y, loss="mse", backends=("julia", "jax"))
    assert not report.unavailable
    for q in report.quantities:
        (pair,) = q.pairs
        assert (pair.a, pair.b) == ("julia", "jax")
        assert pair.max_rel < 1e-10, f"{q.name}: {pair}"


def test_a_failing_quantity_shows_in_its_row_and_the_rest_runs():
    theta, X, Y = _data()
    report = fh.compare(MODEL, theta, X, quantities=("divergence", "input_jacobian"), backends=("jax",))
    divergence, jacobian = report.quantities
    assert divergence.runs[0].error.startswith("InputError") and "C == d" in divergence.runs[0].error
    assert jacobian.shape == (12, 1, 2) and jacobian.runs[0].error is None
    assert "failed: InputError" in str(report)


def test_html_and_text_tables():
    theta, X, Y = _data()
    report = fh.compare(MODEL, theta, X, Y, quantities=["ggn"], backends=["jax"], repeat=2)
    html = report._repr_html_()
    assert html.count("<table>") == 1 and "<td>ggn</td>" in html and "<td>(21, 21)</td>" in html
    lines = str(report).splitlines()
    assert lines[0].startswith("fluxhess compare: Chain(Dense(2, 5, 'tanh'), Dense(5, 1, 'sigmoid')); P = 21, N = 12")
    assert any(line.split()[:3] == ["ggn", "(21,", "21)"] for line in lines)
    assert "fastest of 2 calls" in str(report)


def test_compare_rejects_bad_arguments():
    theta, X, Y = _data()
    with pytest.raises(fh.InputError, match="quantities"):
        fh.compare(MODEL, theta, X, Y, quantities=("hessain",))
    with pytest.raises(fh.InputError, match="backends"):
        fh.compare(MODEL, theta, X, Y, backends=("torch",))
    with pytest.raises(fh.InputError, match="y is required for hessian"):
        fh.compare(MODEL, theta, X)
    with pytest.raises(fh.InputError, match="repeat"):
        fh.compare(MODEL, theta, X, Y, repeat=0)


def test_parse_model():
    assert parse_model("2,5,1:tanh,sigmoid") == MODEL
    assert parse_model("3,4,2") == fh.Chain(fh.Dense(3, 4, "tanh"), fh.Dense(4, 2))
    assert parse_model("3,4,3:relu,softmax") == fh.Chain(fh.Dense(3, 4, "relu"), fh.Dense(4, 3), fh.Activation("softmax"))
    with pytest.raises(fh.InputError, match="2 Dense layers but 1 activations"):
        parse_model("2,5,1:tanh")
    with pytest.raises(fh.InputError, match="integers"):
        parse_model("2,x,1")


def test_cli_compare_prints_the_report(capsys):
    code = cli_main(["compare", "--model", "2,5,1:tanh,sigmoid", "--loss", "crossentropy", "--n", "100", "--backends", "julia,jax"])
    out = capsys.readouterr().out
    assert code == 0
    assert out.startswith("fluxhess compare: Chain(Dense(2, 5, 'tanh'), Dense(5, 1, 'sigmoid')); P = 21, N = 100, loss = crossentropy")
    for q in ("hessian", "ggn", "empirical_fisher", "input_hessian"):
        assert f"\n{q} " in out
    assert ("unavailable: julia" in out) == (fh.backends()["julia"] is not None)


def test_cli_compare_reports_a_bad_model_string(capsys):
    assert cli_main(["compare", "--model", "2,5,1:tanh"]) == 2
    assert "InputError" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--seed", "-1"], "--seed must be a non-negative integer"),
        (["--n", "0"], "--n must be a positive integer"),
        (["--n", str(10**15)], "compare data of shape"),
        (["--n", str(10**40)], "compare data of shape"),
        (["--model", "100000,100000,100000,1"], "init of shape"),
        (["--model", "2,-5,1"], "InputError"),
        (["--repeat", "0"], "repeat must be a positive integer"),
    ],
)
def test_cli_compare_bad_numbers_are_messages_not_tracebacks(argv, words, capsys):
    """Before: --seed -1 raised numpy's ValueError, a huge --n or --model a MemoryError (or a long allocation)."""
    assert cli_main(["compare", "--backends", "jax", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fluxhess compare: ") and words in err and "Traceback" not in err, err


def test_cli_setup_julia_without_network_says_what_failed_and_what_to_do(monkeypatch, capsys):
    """Before: the raw URLError traceback of juliapkg's download, about 40 lines."""
    import sys
    import urllib.error

    juliapkg = pytest.importorskip("juliapkg", reason="setup-julia needs juliapkg (installed with juliacall)")
    if "juliacall" in sys.modules:
        pytest.skip("Julia was started in this test process; setup-julia refuses to run then (tested elsewhere)")
    for name in ("PYTHON_JULIACALL_EXE", "PYTHON_JULIACALL_PROJECT", "PYTHON_JULIAPKG_OFFLINE"):
        monkeypatch.delenv(name, raising=False)

    def offline():
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(juliapkg, "resolve", offline)
    monkeypatch.setattr(juliapkg, "offline", lambda flag: None)
    from fluxhess._backends.julia import backend

    online = backend._ONLINE
    assert cli_main(["setup-julia"]) == 2
    assert backend._ONLINE == online  # a failed setup leaves nothing marked as installed
    err = capsys.readouterr().err
    assert err.startswith("fluxhess setup-julia: JuliaUnavailableError: setting up Julia failed:") and "(URLError" in err, err
    for hint in ("network", "PYTHON_JULIAPKG_EXE", "PYTHON_JULIACALL_SYSIMAGE", "Traceback"):
        assert (hint in err) == (hint != "Traceback"), (hint, err)
