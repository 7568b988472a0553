"""llava-shapes: an offline vision-language model, a real ``LlavaForConditionalGeneration``.

Vision tower: DINOv2 ViT-S/14 (asset ``dinov2-small``), frozen, at 112 x 112 pixels: an 8 x 8
patch grid, so every image is 64 visual tokens (features of the penultimate layer, class token
dropped, LLaVA's ``vision_feature_layer=-2``, ``"default"`` strategy). Language model:
SmolLM2-135M-Instruct (asset ``smollm2``), frozen, with one added token ``<image>`` whose
embedding row is the mean of the others. Between them LLaVA's two-layer projector
(384 -> 576 -> 576, GELU), the only trained part, trained on easy-VQA and seeded
multi-object scenes (:mod:`tokenreduce.data.vqa`).

Why 112 pixels: the frozen LLM's forward and backward (the gradient reaches the projector
through all 30 layers) dominate a training step and grow with the prompt. 64 visual tokens make
a ~100-token prompt, and a step of batch 8 takes ~3.3 s on 2 idle CPU cores; 224 pixels (256
visual tokens) make ~290 tokens: on one CPU core a step took ~5 s at 112 px and ~17 s at
224 px (3.4x), for images (64 px easy-VQA, 112 px scenes) with no detail that 112 px cannot
show. The vision tower's features are computed once per image in training (:class:`FeatureCache`).

Only the projector is saved (safetensors, ~2 MB); everything else is rebuilt from the offline
packages. The prompt is SmolLM2's chat format with a short system message::

    <|im_start|>system\\nAnswer the question about the image with one word.<|im_end|>
    <|im_start|>user\\n<image>\\nwhat color is the circle?<|im_end|>\\n<|im_start|>assistant\\n

and the answer is one word followed by ``<|im_end|>``.

Train (resumable; progress lines; evaluation and a model card at the end)::

    python -m tokenreduce.assets llava-shapes train --out DIR --steps 3000 --seed 0

>>> model, processor = tokenreduce.assets.load("llava-shapes")            # trained projector
>>> model, processor = tokenreduce.assets.load("llava-shapes", checkpoint="DIR")
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import register
from .cache import cache_dir
from .training import run_steps

IMAGE_SIZE = 112
PATCH_SIZE = 14
VISUAL_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2
IMAGE_TOKEN = "<image>"
END = "<|im_end|>"
SYSTEM = "Answer the question about the image with one word."
VISION_FEATURE_LAYER = -2
PROJECTOR_FILE = "projector.safetensors"
BUNDLED = Path(__file__).parent / "checkpoints" / "llava-shapes-projector.safetensors"
TRAIN_COMMAND = "python -m tokenreduce.assets llava-shapes train --out DIR --steps N --seed S"


def default_dir() -> Path:
    """Where ``train`` writes by default and ``load`` looks after the bundled checkpoint."""
    return cache_dir() / "llava-shapes"


def image_processor(size: int = IMAGE_SIZE) -> Any:
    """DINOv2's normalisation at ``size`` pixels: shorter side to ``size`` (bicubic), centre
    crop ``size`` x ``size``; ``pixel_values`` (B, 3, size, size)."""
    from transformers import BitImageProcessor

    from .dinov2 import MEAN, STD

    return BitImageProcessor(
        size={"shortest_edge": size},
        resample=3,
        crop_size={"height": size, "width": size},
        image_mean=list(MEAN),
        image_std=list(STD),
    )


def make_processor(tokenizer: Any, size: int = IMAGE_SIZE) -> Any:
    """A ``LlavaProcessor`` that expands each ``<image>`` of a prompt into
    ``(size // 14) ** 2`` placeholder tokens; left padding (for batched generation)."""
    from transformers import LlavaProcessor

    tokenizer.padding_side = "left"
    return LlavaProcessor(
        image_processor=image_processor(size),
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        image_token=IMAGE_TOKEN,
        num_additional_image_tokens=1,  # DINOv2's class token, dropped by "default"
        chat_template=tokenizer.chat_template,
    )


def prompt(tokenizer: Any, question: str) -> str:
    """The chat-format prompt for ``question``, ending where the answer starts."""
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"{IMAGE_TOKEN}\n{question}"},
    ]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _text_state(lm: Any, vocab: int) -> dict[str, Any]:
    """The language model's weights named as in LLaVA, the embedding grown to ``vocab`` rows
    (new rows: the mean row, so the rebuild is deterministic)."""
    import torch

    state = {f"model.language_model.{k}": v for k, v in lm.model.state_dict().items()}
    key = "model.language_model.embed_tokens.weight"
    embed = state[key]
    extra = embed.mean(0, keepdim=True).expand(vocab - embed.shape[0], -1)
    state[key] = torch.cat([embed, extra])
    if not lm.config.tie_word_embeddings:
        head = lm.lm_head.weight
        state["lm_head.weight"] = torch.cat([head, head.mean(0, keepdim=True).expand_as(extra)])
    return state


def init_projector(model: Any, seed: int) -> None:
    """Re-initialise the projector from ``seed`` (PyTorch's default ``Linear`` init)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    for layer in (
        model.model.multi_modal_projector.linear_1,
        model.model.multi_modal_projector.linear_2,
    ):
        bound = layer.in_features**-0.5
        with torch.no_grad():
            layer.weight.copy_(torch.rand(layer.weight.shape, generator=gen) * 2 * bound - bound)
            layer.bias.copy_(torch.rand(layer.bias.shape, generator=gen) * 2 * bound - bound)


def assemble(vision: Any, lm: Any, tokenizer: Any, size: int = IMAGE_SIZE, seed: int = 0) -> tuple:
    """``(model, processor)``: a ``LlavaForConditionalGeneration`` in eval mode holding copies of
    ``vision`` (a ``Dinov2Model``) and ``lm`` (a Llama-architecture causal LM), the
    projector initialised from ``seed``, and every parameter but the projector's frozen.
    ``tokenizer`` (``lm``'s) gains the ``<image>`` token."""
    import copy

    from transformers import LlavaConfig, LlavaForConditionalGeneration

    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
    text_config = copy.deepcopy(lm.config)
    text_config.vocab_size = len(tokenizer)
    config = LlavaConfig(
        vision_config=vision.config.to_dict(),
        text_config=text_config.to_dict(),
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        projector_hidden_act="gelu",
        vision_feature_select_strategy="default",
        vision_feature_layer=VISION_FEATURE_LAYER,
        image_seq_length=(size // PATCH_SIZE) ** 2,
        tie_word_embeddings=lm.config.tie_word_embeddings,
    )
    from transformers.initialization import no_init_weights

    # Every tensor is overwritten below (the projector by init_projector): skip the random
    # initialisation of 160M parameters, which takes seconds.
    with no_init_weights():
        model = LlavaForConditionalGeneration(config).to(lm.dtype)
    state = {f"model.vision_tower.{k}": v for k, v in vision.state_dict().items()}
    state.update(_text_state(lm, text_config.vocab_size))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if "multi_modal_projector" not in k and k != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(f"llava-shapes assembly: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    init_projector(model, seed)
    for name, param in model.named_parameters():
        param.requires_grad_("multi_modal_projector" in name)
    return model.eval(), make_processor(tokenizer, size)


def projector_state(model: Any) -> dict[str, Any]:
    """The trained part: the projector's tensors (``linear_1.weight`` ...), contiguous copies."""
    state = model.model.multi_modal_projector.state_dict()
    return {k: v.detach().contiguous().clone() for k, v in state.items()}


def save_projector(model: Any, path: Path, info: dict[str, Any]) -> None:
    """Write the projector to ``path`` (safetensors, ``info`` as JSON metadata), atomically."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    meta = {"llava_shapes": json.dumps({"image_size": IMAGE_SIZE, **info})}
    save_file(projector_state(model), str(tmp), metadata=meta)
    tmp.chmod(0o644)  # a file others read (bundled, shared caches), like the rest
    tmp.replace(path)


def load_projector(model: Any, path: Path) -> dict[str, Any]:
    """Load a projector file into ``model``; returns its metadata. Raises ValueError when the
    file was trained for another image size or projector shape."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as f:
        info = json.loads((f.metadata() or {}).get("llava_shapes", "{}"))
    if info.get("image_size", IMAGE_SIZE) != IMAGE_SIZE:
        raise ValueError(
            f"{path} was trained at {info['image_size']} px; this model uses {IMAGE_SIZE} px"
        )
    state = load_file(str(path))
    projector = model.model.multi_modal_projector
    try:
        projector.load_state_dict(
            {k: v.to(projector.linear_1.weight.dtype) for k, v in state.items()}
        )
    except RuntimeError as err:
        raise ValueError(f"{path} does not fit this model's projector: {err}") from err
    return info


def find_checkpoint(checkpoint: str | Path | None = None) -> Path:
    """The projector file: ``checkpoint`` (a file, or a training folder holding
    ``projector.safetensors``), else the bundled one, else the one in :func:`default_dir`.

    Raises FileNotFoundError, saying how to train one, when there is none."""
    if checkpoint is not None:
        path = Path(checkpoint)
        path = path / PROJECTOR_FILE if path.is_dir() else path
        if not path.is_file():
            raise FileNotFoundError(
                f"no llava-shapes projector at {path}; train one with: {TRAIN_COMMAND}"
            )
        return path
    for path in (BUNDLED, default_dir() / PROJECTOR_FILE):
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"llava-shapes has no trained projector yet (looked at {BUNDLED} and "
        f"{default_dir() / PROJECTOR_FILE}). Train one with: {TRAIN_COMMAND} (without --out it "
        f"writes to {default_dir()}, where load finds it), or pass checkpoint=DIR; "
        f"untrained=True gives a randomly initialised projector (for tests only)"
    )


def load(
    checkpoint: str | Path | None = None, untrained: bool = False, dtype: Any = None, seed: int = 0
) -> tuple[Any, Any]:
    """``(model, processor)`` of llava-shapes, in eval mode.

    Args:
        checkpoint: a projector file or training folder (default: see :func:`find_checkpoint`).
        untrained: keep the projector initialised from ``seed`` instead (tests only).
        dtype: torch dtype of the weights (float32 by default).

    Raises:
        FileNotFoundError: no trained projector was found (and ``untrained`` is False).
    """
    path = None if untrained else find_checkpoint(checkpoint)  # fail before loading models
    from . import dinov2
    from .llm import load_lm

    vision, _ = dinov2.load(dtype=dtype)
    lm, tokenizer = load_lm("smollm2", dtype=dtype)
    model, processor = assemble(vision, lm, tokenizer, seed=seed)
    if path is not None:
        load_projector(model, path)
    return model, processor


def _llava_shapes(**kwargs: Any) -> tuple[Any, Any]:
    return load(**kwargs)


register(
    "llava-shapes",
    "LLaVA (LlavaForConditionalGeneration): DINOv2 ViT-S/14 at 112 px (64 visual tokens) + "
    "SmolLM2-135M-Instruct, projector trained on easy-VQA and seeded shape scenes; "
    "(model, processor); train with python -m tokenreduce.assets llava-shapes train",
)(_llava_shapes)


# --- training ------------------------------------------------------------------------------


def encode(
    processor: Any, images: list, questions: list[str], answers: list[str] | None = None
) -> dict[str, Any]:
    """Model inputs for a batch: ``input_ids``, ``attention_mask`` (left padding),
    ``position_ids`` (counting real tokens only), ``pixel_values``; with ``answers`` the
    answer and ``<|im_end|>`` are appended and ``labels`` mark those tokens only (else -100).

    Raises ValueError when an answer's tokens change when appended to the prompt (the labels
    would not be what generation must produce)."""
    import torch

    tokenizer = processor.tokenizer
    texts = [prompt(tokenizer, q) for q in questions]
    if answers is not None:
        texts = [t + a + END for t, a in zip(texts, answers, strict=True)]
    enc = dict(processor(images=list(images), text=texts, return_tensors="pt", padding=True))
    enc["position_ids"] = (enc["attention_mask"].cumsum(-1) - 1).clamp_min(0)
    if answers is None:
        return enc
    labels = torch.full_like(enc["input_ids"], -100)
    for row, answer in enumerate(answers):
        ids = tokenizer(answer + END, add_special_tokens=False)["input_ids"]
        if enc["input_ids"][row, -len(ids) :].tolist() != ids:
            raise ValueError(f"answer {answer!r} tokenises differently after the prompt")
        labels[row, -len(ids) :] = enc["input_ids"][row, -len(ids) :]
    enc["labels"] = labels
    return enc


def vision_features(model: Any, pixel_values: Any) -> Any:
    """What LLaVA feeds its projector: (B, 64, 384), the vision tower's hidden states at
    ``vision_feature_layer`` without the class token."""
    import torch

    with torch.no_grad():
        out = model.model.vision_tower(pixel_values, output_hidden_states=True)
    return out.hidden_states[model.config.vision_feature_layer][:, 1:]


def forward_with_features(model: Any, features: Any, enc: dict[str, Any]) -> Any:
    """The model's forward with the vision tower's ``features`` given (cached) instead of
    ``pixel_values``: the projected features fill the placeholder embeddings, as LLaVA does."""
    ids = enc["input_ids"]
    embeds = model.get_input_embeddings()(ids)
    projected = model.model.multi_modal_projector(features).to(embeds.dtype)
    placeholders = (ids == model.config.image_token_id)[..., None]
    embeds = embeds.masked_scatter(placeholders, projected)
    return model(
        inputs_embeds=embeds,
        attention_mask=enc["attention_mask"],
        position_ids=enc["position_ids"],
        labels=enc.get("labels"),
    )


class FeatureCache:
    """The frozen vision tower's features, computed once per (split, image) and kept."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.features: dict[tuple[str, int], Any] = {}

    def get(self, keys: list[tuple[str, int]], pixel_values: Any) -> Any:
        """(B, 64, 384) for the images ``keys`` whose pixels are ``pixel_values``."""
        import torch

        todo = [i for i, key in enumerate(keys) if key not in self.features]
        if todo:
            fresh = vision_features(self.model, pixel_values[todo])
            for i, feat in zip(todo, fresh, strict=True):
                self.features[keys[i]] = feat
        return torch.stack([self.features[key] for key in keys])


def batch_items(data: list, step: int, seed: int, batch_size: int) -> list[tuple[int, int]]:
    """(split index, question index) of each example of ``step``'s batch: a function of
    ``(seed, step)`` only, so a resumed run sees the batches an uninterrupted one would.
    Slots alternate between the splits, so each is half of the training mixture."""
    import numpy as np

    rng = np.random.default_rng([seed, step])
    picks = []
    for slot in range(batch_size):
        split = slot % len(data)
        picks.append((split, int(rng.integers(len(data[split])))))
    return picks


def learning_rate(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then a cosine decay to a tenth of ``peak``."""
    import math

    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, progress))))


def fingerprint(split: Any) -> str:
    """``name:digest`` of a split's questions and answers: a resumed run must see the same data
    (the same scene count and data seed), not only the same names."""
    import hashlib

    text = "\n".join(split.questions + split.answers)
    return f"{split.name}:{hashlib.sha256(text.encode()).hexdigest()[:16]}"


@dataclass(frozen=True)
class TrainOptions:
    """A training run. ``out`` holds its checkpoint; a run resumes from it when the options
    that shape the result (all but ``steps``, ``out`` and the logging/saving intervals) match."""

    out: Path
    steps: int
    seed: int = 0
    batch_size: int = 8
    lr: float = 1e-3
    warmup: int = 30
    save_every: int = 50
    log_every: int = 10
    command: str = ""  # recorded in state.json for the model card

    def run_key(self, data_names: list[str]) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "warmup": self.warmup,
            "data": data_names,
        }


def _save_checkpoint(
    model: Any, optimizer: Any, opts: TrainOptions, key: dict[str, Any], step: int, seconds: float
) -> None:
    """projector.safetensors, optimizer.pt (``torch.load(weights_only=True)`` reads it) and
    state.json, written last: a checkpoint is the step state.json names."""
    import torch

    opts.out.mkdir(parents=True, exist_ok=True)
    tmp = opts.out / "optimizer.pt.tmp"
    torch.save(optimizer.state_dict(), tmp)
    tmp.replace(opts.out / "optimizer.pt")
    save_projector(model, opts.out / PROJECTOR_FILE, {"step": step, "seed": opts.seed})
    state = {
        "step": step,
        "steps": opts.steps,
        "train_seconds": seconds,
        "run": key,
        "command": opts.command,
    }
    tmp = opts.out / "state.json.tmp"
    tmp.write_text(json.dumps(state, indent=1) + "\n")
    tmp.replace(opts.out / "state.json")


def _resume(
    model: Any, optimizer: Any, opts: TrainOptions, key: dict[str, Any]
) -> tuple[int, float]:
    """(step, training seconds so far) from ``opts.out``'s checkpoint, else (0, 0.0) with the
    projector initialised from the seed. Raises ValueError when the checkpoint belongs to a
    run with other options, RuntimeError when its files disagree on the step."""
    import torch

    state_file = opts.out / "state.json"
    if not state_file.is_file():
        init_projector(model, opts.seed)
        return 0, 0.0
    state = json.loads(state_file.read_text())
    if state["run"] != key:
        raise ValueError(
            f"{opts.out} holds a run with {state['run']}, not {key}: resume with "
            f"the same options or choose another --out"
        )
    info = load_projector(model, opts.out / PROJECTOR_FILE)
    if info.get("step") != state["step"]:
        raise RuntimeError(
            f"{opts.out}: projector is at step {info.get('step')}, state.json at "
            f"{state['step']} (interrupted while saving); delete the folder"
        )
    optimizer.load_state_dict(torch.load(opts.out / "optimizer.pt", weights_only=True))
    return state["step"], state["train_seconds"]


def _train_step(
    model: Any,
    processor: Any,
    cache: FeatureCache,
    optimizer: Any,
    data: list,
    opts: TrainOptions,
    step: int,
) -> float:
    import torch

    items = batch_items(data, step, opts.seed, opts.batch_size)
    image_ids = [int(data[s].image_index[q]) for s, q in items]
    enc = encode(
        processor,
        [data[s].images[i] for (s, _), i in zip(items, image_ids, strict=True)],
        [data[s].questions[q] for s, q in items],
        [data[s].answers[q] for s, q in items],
    )
    enc = {k: v.to(model.device) for k, v in enc.items()}
    keys = [(data[s].name, i) for (s, _), i in zip(items, image_ids, strict=True)]
    features = cache.get(keys, enc["pixel_values"])
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(step, opts.steps, opts.lr, opts.warmup)
    loss = forward_with_features(model, features, enc).loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(
        [p for g in optimizer.param_groups for p in g["params"]], max_norm=1.0
    )
    optimizer.step()
    return float(loss.detach())


def train(
    model: Any, processor: Any, data: list, opts: TrainOptions, log: Any = print
) -> dict[str, Any]:
    """Train ``model``'s trainable parameters (the projector) on the ``data`` splits
    (:class:`~tokenreduce.data.vqa.VQASplit`, mixed in equal parts) up to ``opts.steps``,
    resuming from ``opts.out``; ``log`` gets a progress line every ``opts.log_every`` steps.
    Returns ``{"step", "train_seconds", "seconds_per_step"}`` (seconds of this session)."""

    import torch

    key = opts.run_key([fingerprint(d) for d in data])
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=opts.lr, weight_decay=0.0)
    step, seconds = _resume(model, optimizer, opts, key)
    cache = FeatureCache(model)
    model.eval()  # no dropout anywhere; eval mode keeps the forward deterministic
    return run_steps(
        step, opts.steps, seconds,
        lambda i: _train_step(model, processor, cache, optimizer, data, opts, i),
        lambda i, secs: _save_checkpoint(model, optimizer, opts, key, i, secs),
        log_every=opts.log_every, save_every=opts.save_every, log=log,
        note=lambda i: f"lr {learning_rate(i - 1, opts.steps, opts.lr, opts.warmup):.2e}  ",
    )  # fmt: skip


# --- evaluation and model card -------------------------------------------------------------


def answer_word(text: str) -> str:
    """The first word of a generated answer, lower case, without punctuation."""
    words = text.strip().lower().split()
    return words[0].strip(".,;:!?\"'") if words else ""


def predict(
    model: Any, processor: Any, split: Any, indices: list[int], batch_size: int = 16
) -> list[str]:
    """Greedy answers (one word each) to the questions ``indices`` of ``split``."""
    import torch

    out = []
    for start in range(0, len(indices), batch_size):
        chunk = indices[start : start + batch_size]
        enc = encode(
            processor,
            [split.images[split.image_index[i]] for i in chunk],
            [split.questions[i] for i in chunk],
        )
        enc.pop("position_ids")  # generate derives them from the mask at every step
        enc = {k: v.to(model.device) for k, v in enc.items()}
        with torch.no_grad():
            ids = model.generate(
                **enc,
                max_new_tokens=4,
                do_sample=False,
                pad_token_id=processor.tokenizer.pad_token_id,
            )
        texts = processor.tokenizer.batch_decode(
            ids[:, enc["input_ids"].shape[1] :], skip_special_tokens=True
        )
        out.extend(answer_word(t) for t in texts)
    return out


def evaluate(
    model: Any,
    processor: Any,
    split: Any,
    limit: int | None = None,
    seed: int = 0,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Exact-match accuracy on ``split``, on at most ``limit`` questions of each question type
    (drawn with ``seed``; all when None), so rare types are measured as well as common ones:
    ``{"name", "n", "accuracy", "mean_per_type", "per_type": {qtype: {"n", "accuracy",
    "majority"}}}``; ``accuracy`` is over all questions evaluated, ``majority`` the accuracy of
    always giving the type's most common answer (on the whole split)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    qtypes = np.array(split.qtypes)
    indices = []
    for qtype in sorted(set(split.qtypes)):
        of_type = np.flatnonzero(qtypes == qtype)
        if limit is not None and limit < len(of_type):
            of_type = rng.choice(of_type, limit, replace=False)
        indices.extend(int(i) for i in of_type)
    sub = split.subset(sorted(indices))
    predictions = predict(model, processor, sub, list(range(len(sub))), batch_size)
    right = np.array([p == a for p, a in zip(predictions, sub.answers, strict=True)])
    qtypes = np.array(sub.qtypes)
    majority = split.majority()
    per_type = {
        t: {
            "n": int((qtypes == t).sum()),
            "accuracy": float(right[qtypes == t].mean()),
            "majority": majority[t],
        }
        for t in sorted(set(sub.qtypes))
    }
    return {
        "name": split.name,
        "n": len(sub),
        "accuracy": float(right.mean()),
        "mean_per_type": float(np.mean([r["accuracy"] for r in per_type.values()])),
        "per_type": per_type,
    }


def model_card(
    results: list[dict[str, Any]], state: dict[str, Any], command: str, data: list[Any]
) -> str:
    """The model card (markdown): model, data, training, accuracy per question type."""
    lines = [
        "# llava-shapes",
        "",
        f"`LlavaForConditionalGeneration`: DINOv2 ViT-S/14 at {IMAGE_SIZE} px "
        f"({VISUAL_TOKENS} visual tokens, layer {VISION_FEATURE_LAYER}, frozen) + "
        "SmolLM2-135M-Instruct (frozen); only the projector (384 -> 576 -> 576, GELU) is trained.",
        "",
        "## Data",
        "",
        *(f"- `{d.name}`: {len(d)} questions on {len(d.images)} images" for d in data),
        "",
        "## Training",
        "",
        f"- trained by: `{state.get('command') or 'unknown'}`",
        f"- evaluated by: `{command}`",
        f"- steps: {state['step']}, batch {state['run']['batch_size']}, peak lr "
        f"{state['run']['lr']}, seed {state['run']['seed']}",
        f"- training time: {state['train_seconds'] / 60:.1f} min "
        f"({state['train_seconds'] / max(1, state['step']):.2f} s/step)",
        "",
        "## Exact-match accuracy (greedy, first word)",
        "",
    ]
    for res in results:
        lines += [
            f"### `{res['name']}`: {res['accuracy']:.1%} on {res['n']} questions "
            f"({res['mean_per_type']:.1%} averaged over question types)",
            "",
            "| question type | n | accuracy | majority answer |",
            "|---|---:|---:|---:|",
        ]
        lines += [
            f"| {t} | {r['n']} | {r['accuracy']:.1%} | {r['majority']:.1%} |"
            for t, r in res["per_type"].items()
        ]
        lines.append("")
    return "\n".join(lines)


# --- command line --------------------------------------------------------------------------


def _parser() -> Any:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tokenreduce.assets llava-shapes")
    sub = parser.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("train", help="train (or resume) the projector, then evaluate")
    tr.add_argument("--out", type=Path, default=None, help=f"default: {default_dir()}")
    tr.add_argument("--steps", type=int, required=True, help="total steps (resumes below it)")
    tr.add_argument("--seed", type=int, default=0, help="projector init and batch order")
    tr.add_argument("--batch-size", type=int, default=8)
    tr.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    tr.add_argument("--warmup", type=int, default=30, help="warm-up steps")
    tr.add_argument("--save-every", type=int, default=50)
    tr.add_argument("--log-every", type=int, default=10)
    tr.add_argument("--no-eval", action="store_true", help="skip evaluation and model card")
    for p in (tr, sub.add_parser("evaluate", help="evaluate a checkpoint, write its card")):
        p.add_argument("--scenes", type=int, default=4000, help="training scenes")
        p.add_argument("--test-scenes", type=int, default=500, help="held-out test scenes")
        p.add_argument("--data-seed", type=int, default=0, help="seed of the scene data")
        p.add_argument("--eval-limit", type=int, default=200, help="test questions per type")
        p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
        p.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    sub.choices["evaluate"].add_argument("--checkpoint", type=Path, default=None)
    return parser


def _splits(args: Any) -> tuple[list[Any], list[Any]]:
    from ..data.vqa import easy_vqa, scenes_vqa

    train_data = [easy_vqa("train"), scenes_vqa("train", args.scenes, args.data_seed)]
    test_data = [easy_vqa("test"), scenes_vqa("test", args.test_scenes, args.data_seed)]
    return train_data, test_data


def _evaluate_and_card(
    model: Any,
    processor: Any,
    folder: Path,
    train_data: list,
    test_data: list,
    args: Any,
    command: str,
) -> None:
    results = [evaluate(model, processor, d, args.eval_limit) for d in test_data]
    for res in results:
        per_type = ", ".join(f"{t} {r['accuracy']:.1%}" for t, r in res["per_type"].items())
        print(f"{res['name']}: {res['accuracy']:.1%} ({per_type})", flush=True)
    state = json.loads((folder / "state.json").read_text())
    (folder / "eval.json").write_text(json.dumps(results, indent=1) + "\n")
    card = model_card(results, state, command, train_data)
    (folder / "MODEL_CARD.md").write_text(card + "\n")
    print(f"wrote {folder / 'MODEL_CARD.md'}", flush=True)


def main(argv: list[str] | None = None) -> None:
    """``train`` or ``evaluate`` (see ``--help``)."""
    from .commands import parse

    args, command = parse(_parser(), "llava-shapes", argv)
    train_data, test_data = _splits(args)
    if args.command == "evaluate":
        folder = find_checkpoint(args.checkpoint).parent
        model, processor = load(checkpoint=folder)
        model.to(args.device)
        return _evaluate_and_card(model, processor, folder, train_data, test_data, args, command)
    opts = TrainOptions(
        args.out or default_dir(),
        args.steps,
        args.seed,
        args.batch_size,
        args.lr,
        args.warmup,
        args.save_every,
        args.log_every,
        command,
    )
    model, processor = load(untrained=True, seed=args.seed)
    model.to(args.device)
    result = train(model, processor, train_data, opts, log=lambda s: print(s, flush=True))
    print(
        f"trained to step {result['step']} in {result['train_seconds'] / 60:.1f} min; "
        f"checkpoint in {opts.out}",
        flush=True,
    )
    if not args.no_eval:
        _evaluate_and_card(model, processor, opts.out, train_data, test_data, args, command)

