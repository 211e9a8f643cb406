"""The training progress line: a regulariser's value shows as what it is, however small."""

from pslora_cli.report import _stats_text


def test_a_small_regulariser_value_is_not_printed_as_zero():
    """EWC's penalty on LoRA factors is ~1e-7 at λ = 400: printed to four decimals it read 0.0000, as if the term
    were off. Four significant digits show it; the usual losses print as before."""
    text = _stats_text({"loss": 0.38712, "ewc_loss": 3.21e-7, "train_accuracy": 0.9})
    assert "ewc 3.21e-07" in text and "loss 0.3871" in text and "acc 0.90" in text
    assert "l1 4355 " in _stats_text({"loss": 1.0, "sparsity_loss": 4355.251, "train_accuracy": 1.0})
