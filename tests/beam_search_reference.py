"""Beam search as transformers' generate runs it (num_beams > 1, do_sample=False: BeamSearchScorer and
BeamHypotheses of generation/beam_search.py), written here from that source for the reference scripts, in float64
over a function giving the next token's logits of a whole sequence (recomputed each step: no cache to trust).

Each step: log-softmax of every beam's logits plus the beam's score; the 2·K best (beam, token) pairs in order;
a pair ending in EOS among the first K becomes a finished hypothesis (without the EOS, scored by its summed
log-probability over generated_len ** length_penalty, generated_len counting the EOS), the others fill the K beams.
The search stops when K hypotheses are done and (early_stopping True) at once, (False) when the best running score
cannot beat the worst hypothesis, ("never") when it cannot at max length; or at max_new_tokens, where the running
beams join the hypotheses. The result: the best hypothesis's new tokens, with the EOS it ended with."""
import torch


def beam_search(next_logits, prompt, num_beams, max_new_tokens, length_penalty, early_stopping, eos):
    """next_logits(list of ids) -> (vocab,) float64 logits; prompt: the ids the beams start from (for an encoder-
    decoder, the decoder's start token). Returns (new token ids, score)."""
    k = num_beams
    prompt_len = len(prompt)
    max_length = prompt_len + max_new_tokens
    beams = [list(prompt) for _ in range(k)]
    scores = torch.full((k,), -1e9, dtype=torch.float64)
    scores[0] = 0.0
    hyps = []  # (score, tokens)
    worst = 1e9
    done = False

    def add(tokens, sum_logprobs, generated_len):
        nonlocal worst
        score = sum_logprobs / (generated_len ** length_penalty)
        if len(hyps) < k or score > worst:
            hyps.append((score, tokens))
            if len(hyps) > k:
                order = sorted(range(len(hyps)), key=lambda i: hyps[i][0])
                del hyps[order[0]]
                worst = min(s for s, _ in hyps)
            else:
                worst = min(score, worst)

    def is_done(best_sum_logprobs, cur_len):
        if len(hyps) < k:
            return False
        if early_stopping is True:
            return True
        if early_stopping is False:
            return worst >= best_sum_logprobs / (cur_len - prompt_len) ** length_penalty
        length = max_length if length_penalty > 0 else cur_len  # "never"
        return worst >= best_sum_logprobs / (length - prompt_len) ** length_penalty

    while len(beams[0]) < max_length:
        logprobs = torch.stack([torch.log_softmax(next_logits(b), dim=-1) for b in beams])
        vocab = logprobs.shape[1]
        total = (logprobs + scores[:, None]).view(-1)
        top_scores, top_ids = torch.topk(total, 2 * k)
        cur_len = len(beams[0]) + 1
        next_beams, next_scores = [], []
        for rank, (score, flat) in enumerate(zip(top_scores.tolist(), top_ids.tolist())):
            beam, token = flat // vocab, flat % vocab
            if token in eos:
                if rank >= k:
                    continue
                add(list(beams[beam]), score, cur_len - prompt_len)
            else:
                next_beams.append(beams[beam] + [token])
                next_scores.append(score)
            if len(next_beams) == k:
                break
        done = done or is_done(top_scores.max().item(), cur_len)
        beams, scores = next_beams, torch.tensor(next_scores, dtype=torch.float64)
        if done:
            break
    if not done:
        for b in range(k):
            add(list(beams[b]), scores[b].item(), len(beams[b]) - prompt_len)
    best_score, best = max(hyps, key=lambda h: h[0])
    new = best[prompt_len:]
    if len(best) < max_length:
        new = new + [eos[0]]
    return new, best_score
