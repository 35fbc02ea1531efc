"""DoLa: decoding by contrasting layers (Chuang et al., 2023).

Each step compares the final layer's next-token distribution with that of a
"premature" layer picked among the candidates named by ``dola_layers``:

1. Every candidate layer's hidden state goes through the model's vocabulary
   head (``model.early_exit_logits``: final norm + output embeddings).
2. The premature layer is the candidate whose distribution is farthest from
   the final one by Jensen-Shannon divergence (chosen per batch row, as the
   paper chooses per token).
3. Adaptive plausibility: tokens whose final probability is below
   ``relative_top`` (0.1) times the best token's are excluded.
4. The scores are ``log p_final - log p_premature`` over the remaining
   tokens; logits processors then apply and the token is picked greedily or
   by sampling.

``dola_layers`` is "low" (the lower half of the layers, every second one),
"high" (the upper half) or a list of layer indices (0 = the embeddings).
When the embeddings are tied to the output head, layer 0 is skipped in
"low" since its logits only echo the input token.
"""

from __future__ import annotations

import math

import torch

from bestiary.errors import GenerationError
from bestiary.generation.decoding import Recorder, StrategyRun, finish_output, select_tokens
from bestiary.generation.outputs import GenerationStep
from bestiary.generation.prepare import GenerationPlan

RELATIVE_TOP = 0.1


def candidate_layers(dola_layers: str | list[int], num_layers: int, tied_embeddings: bool) -> list[int]:
    """Indices into the hidden-state tuple (0 = embeddings) of the premature candidates."""
    if isinstance(dola_layers, str):
        start = 2 if tied_embeddings else 0
        half = num_layers // 2
        if dola_layers == "low":
            if start >= half:
                return [min(start, num_layers - 1)]
            return list(range(start, half, 2)) if num_layers <= 40 else list(range(start, 20, 2))
        return list(range(half, num_layers, 2)) if num_layers <= 40 else list(range(num_layers - 20, num_layers, 2))
    layers = [int(i) for i in dola_layers if 0 <= int(i) < num_layers]
    if not layers:
        raise GenerationError(f"dola_layers {dola_layers} names no layer below the final one ({num_layers}).")
    return layers


def jensen_shannon(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """JSD between distributions given as log-probabilities (last dimension), summed over the vocabulary."""
    log_m = torch.logaddexp(log_p, log_q) - math.log(2.0)
    kl_pm = (log_p.exp() * (log_p - log_m)).nan_to_num().sum(-1)
    kl_qm = (log_q.exp() * (log_q - log_m)).nan_to_num().sum(-1)
    return 0.5 * (kl_pm + kl_qm)


def contrast_layers(final_logits: torch.Tensor, premature_logits: torch.Tensor) -> torch.Tensor:
    """DoLa scores from final [B, V] and chosen premature [B, V] logits (plausibility filter included)."""
    final = final_logits.float().log_softmax(dim=-1)
    premature = premature_logits.float().log_softmax(dim=-1)
    threshold = final.amax(dim=-1, keepdim=True) + math.log(RELATIVE_TOP)
    implausible = final < threshold
    scores = final - premature
    return scores.masked_fill(implausible, -float("inf"))


def dola_decoding(plan: GenerationPlan) -> StrategyRun:
    """Greedy or sampled decoding on DoLa scores."""
    runner, config, model = plan.runner, plan.config, plan.model
    text_config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    num_layers = int(getattr(text_config, "num_hidden_layers"))
    tied = bool(getattr(text_config, "tie_word_embeddings", False))
    layers = candidate_layers(config.dola_layers, num_layers, tied)
    recorder = Recorder(plan)
    unfinished = torch.ones(runner.rows, dtype=torch.bool, device=plan.device)
    pad = torch.tensor(plan.pad_token_id if plan.pad_token_id is not None else 0, device=plan.device)
    while True:
        outputs = runner.step(output_hidden_states=True)
        final_logits = outputs.logits[:, -1, :].float()
        hidden = getattr(outputs, "decoder_hidden_states", None) or outputs.hidden_states
        premature = torch.stack([model.early_exit_logits(hidden[i][:, -1, :]).float() for i in layers])  # [L, B, V]
        if len(layers) > 1:
            final_log = final_logits.log_softmax(dim=-1)
            divergence = jensen_shannon(final_log[None], premature.log_softmax(dim=-1))  # [L, B]
            chosen = divergence.argmax(dim=0)
            base = premature[chosen, torch.arange(runner.rows, device=plan.device)]
        else:
            base = premature[0]
        contrasted = contrast_layers(final_logits, base)
        scores = plan.processors(runner.input_ids, contrasted) if plan.processors else contrasted
        recorder.record(scores, final_logits, outputs)
        next_tokens = select_tokens(scores, config.do_sample)
        if plan.eos is not None:
            next_tokens = torch.where(unfinished, next_tokens, pad)
        runner.append(next_tokens[:, None])
        unfinished = unfinished & ~plan.criteria(runner.input_ids, scores)
        yield GenerationStep(tokens=next_tokens[:, None], finished=~unfinished)
        if not bool(unfinished.any()):
            break
    return finish_output(plan, runner.input_ids, recorder)


__all__ = ["candidate_layers", "contrast_layers", "dola_decoding", "jensen_shannon"]
