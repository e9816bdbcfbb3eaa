"""Whisper transcripts (issue: real Label Studio projects, transcripts): our batched short-clip path
against faster-whisper's own ``transcribe``, in one run on the same clips.

The clips are the two espeak-made test sentences ("a cat sleeping on the sofa", "a cup of hot
coffee"), alone, concatenated (up to 4 sentences, ~8 s), with added noise (SNR 20 and 10 dB) and
with silence around them. Reported per path: audio seconds per second (ratios against
faster-whisper's default, beam 5 in a 30 s window) and the word error rate against the sentences
spoken, overall and per condition. Two synthetic voices' sentences are a small test: the WER
figures say whether the fast path loses words, not how Whisper does on real speech. Writes
bench/results/bench_transcribe.json.
"""

from __future__ import annotations

import time

import numpy as np

from bench._common import parser, write_results

SR = 16000


SENTENCES = {"cat_speech.wav": "a cat sleeping on the sofa", "coffee_speech.wav": "a cup of hot coffee"}


def clips(smoke: bool) -> list[tuple[np.ndarray, str, str]]:
    """(audio, words spoken, condition) per clip."""
    from annotator.media import load_audio
    from tests.conftest import DATA

    base = [(load_audio((DATA / n).read_bytes(), n), text) for n, text in SENTENCES.items()]
    rng = np.random.default_rng(0)
    gap = np.zeros(SR // 3, np.float32)
    out = [(c, text, "clean") for c, text in base]
    for k in (2, 3, 4):
        order = [base[i % 2] for i in range(k)]
        out.append((np.concatenate([x for c, _ in order for x in (c, gap)]), " ".join(t for _, t in order), "clean"))
    for c, text, _ in list(out):
        for snr_db in (20, 10):
            noise = rng.normal(size=c.shape).astype(np.float32)
            noise *= np.sqrt(np.mean(c ** 2) / 10 ** (snr_db / 10) / np.mean(noise ** 2))
            out.append((c + noise, text, f"noise {snr_db} dB"))
        out.append((np.concatenate([np.zeros(SR, np.float32), c, np.zeros(SR // 2, np.float32)]), text, "silence around"))
    return out[:4] if smoke else out


def words(text: str) -> list[str]:
    return "".join(ch.lower() if ch.isalnum() or ch.isspace() else " " for ch in text).split()


def wer(reference: str, hypothesis: str) -> float:
    ref, hyp = words(reference), words(hypothesis)
    d = np.arange(len(hyp) + 1)
    for i, r in enumerate(ref, 1):
        prev, d[0] = d.copy(), i
        for j, h in enumerate(hyp, 1):
            d[j] = min(prev[j] + 1, d[j - 1] + 1, prev[j - 1] + (r != h))
    return float(d[len(hyp)] / max(1, len(ref)))


def main() -> None:
    args = parser(__doc__).parse_args()
    from annotator.encoders.transcribe import WhisperTranscriber

    transcriber = WhisperTranscriber()
    model = transcriber._model
    data = clips(args.smoke)
    audio = [c for c, _, _ in data]
    seconds = sum(len(c) for c in audio) / SR

    def faster_whisper(beam: int):
        return lambda: [" ".join(s.text.strip() for s in model.transcribe(c, beam_size=beam)[0]).strip()
                        for c in audio]

    paths = {"faster-whisper transcribe, beam 5 (its default)": faster_whisper(5),
             "faster-whisper transcribe, beam 1": faster_whisper(1),
             "ours: batched, beam 5, 20 s window floor": lambda: transcriber.transcribe(audio)}
    results, texts = {}, {}
    for name, run in paths.items():
        run() if not args.smoke else None  # warm-up
        start = time.perf_counter()
        texts[name] = run()
        took = time.perf_counter() - start
        results[name] = {"seconds": round(took, 3), "audio_s_per_s": round(seconds / took, 1)}
    default = next(iter(paths))
    conditions = sorted({cond for _, _, cond in data})
    for name in paths:
        errors = [wer(text, said) for (_, text, _), said in zip(data, texts[name])]
        results[name]["wer"] = round(float(np.mean(errors)), 4)
        results[name]["wer_by_condition"] = {cond: round(float(np.mean([e for e, (_, _, c) in zip(errors, data) if c == cond])), 4)
                                             for cond in conditions}
        results[name]["speedup_vs_default"] = round(results[default]["seconds"] / results[name]["seconds"], 2)
    for name, r in results.items():
        print(f"{name:<48} {r['audio_s_per_s']:>6} audio s/s {r['speedup_vs_default']:>5}x  WER {r['wer']:.3f} "
              f"{r['wer_by_condition']}")
    write_results("bench_transcribe" + ("_smoke" if args.smoke else ""), {"clips": len(audio), "audio_seconds": round(seconds, 1), "paths": results,
                                       "examples": {name: t[:6] for name, t in texts.items()}}, args.out)


if __name__ == "__main__":
    main()
