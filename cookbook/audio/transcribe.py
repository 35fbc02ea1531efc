"""Transcribe an audio file with Whisper, with timestamped segments.

Run from the repository root:

    .venv/bin/python cookbook/audio/transcribe.py [AUDIO_FILE] [--model FOLDER_OR_REPO] [--language en]
                                                  [--chunk-length SECONDS] [--batch-size N]

AUDIO_FILE may be WAV, FLAC, OGG or MP3, at any sampling rate, mono or
stereo (it is resampled to 16 kHz and downmixed). Without one, the script
has Debian's ``espeak-ng`` read a sentence into a WAV file (and falls back
to a synthetic tone when espeak-ng is not installed).

Without ``--model``, no trained weights can be downloaded here, so the
script builds a TINY RANDOM Whisper (2 encoder and 2 decoder layers of width
64, a byte-level BPE vocabulary trained on a few sentences plus Whisper's
special and timestamp tokens) and saves it to a temporary folder in
transformers' format. Its transcript is meaningless text; what the script
shows is the whole path: decoding the file, log-mel features, the decoder
prompt, timestamped segments, and long-form windows for audio over 30 s.
With a real checkpoint (``--model openai/whisper-tiny`` with network
access, or a local copy of it) the same code gives a real transcript.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile
import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

from bestiary import pipeline
from bestiary.generation.config import GenerationConfig
from bestiary_whisper.configuration_whisper import WhisperConfig
from bestiary_whisper.feature_extraction_whisper import WhisperFeatureExtractor
from bestiary_whisper.languages import LANGUAGES
from bestiary_whisper.modeling_whisper import WhisperForConditionalGeneration
from bestiary_whisper.processing_whisper import WhisperProcessor
from bestiary_whisper.tokenization_whisper import WhisperTokenizer

SENTENCE = (
    "Whisper is a speech recognition model. It writes down what it hears, "
    "and tells you when each sentence was said."
)


def speech_file(folder: Path) -> Path:
    """A WAV file of espeak-ng reading SENTENCE, or a two-tone signal when espeak-ng is missing."""
    path = folder / "speech.wav"
    if shutil.which("espeak-ng"):
        subprocess.run(["espeak-ng", "-w", str(path), SENTENCE], check=True, capture_output=True)
    else:
        print("espeak-ng is not installed (apt-get install espeak-ng); using a synthetic tone instead.")
        time = np.arange(16000 * 4) / 16000
        soundfile.write(str(path), (0.3 * np.sin(2 * np.pi * 220 * time) * (time % 1 < 0.6)).astype(np.float32), 16000)
    return path


def tiny_random_whisper(folder: Path, seed: int = 0) -> Path:
    """Build and save the tiny random Whisper described in the module docstring; return its folder."""
    specials = (
        ["<|endoftext|>", "<|startoftranscript|>"]
        + [f"<|{code}|>" for code in list(LANGUAGES)[:99]]
        + ["<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>"]
    )
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator([SENTENCE, "the quick brown fox jumps over the lazy dog"] * 4, trainer)
    backend.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in specials])
    backend.add_tokens([AddedToken(f"<|{i * 0.02:.2f}|>", special=False, normalized=False) for i in range(1501)])
    tokenizer = WhisperTokenizer(tokenizer_object=backend, pad_token="<|endoftext|>", additional_special_tokens=specials[1:])
    ids = {token: backend.token_to_id(token) for token in specials}
    eot = ids["<|endoftext|>"]

    config = WhisperConfig(
        vocab_size=backend.get_vocab_size(), d_model=64, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
        max_target_positions=128, decoder_start_token_id=ids["<|startoftranscript|>"],
        pad_token_id=eot, bos_token_id=eot, eos_token_id=eot, begin_suppress_tokens=[220, eot],
    )
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration.from_config(config).eval()
    with torch.no_grad():  # a random decoder prefers the 1501 timestamp tokens; let text win unless asked
        model.model.decoder.embed_tokens.weight[ids["<|notimestamps|>"] + 1 :] *= 0.05
    model.generation_config = GenerationConfig(
        decoder_start_token_id=ids["<|startoftranscript|>"], bos_token_id=eot, eos_token_id=eot, pad_token_id=eot,
        begin_suppress_tokens=[220, eot], max_length=128, num_beams=1,
        lang_to_id={f"<|{code}|>": ids[f"<|{code}|>"] for code in list(LANGUAGES)[:99]},
        task_to_id={"translate": ids["<|translate|>"], "transcribe": ids["<|transcribe|>"]},
        no_timestamps_token_id=ids["<|notimestamps|>"], prev_sot_token_id=ids["<|startofprev|>"],
        is_multilingual=True, max_initial_timestamp_index=50,
    )
    model.save_pretrained(folder)
    WhisperProcessor(WhisperFeatureExtractor(), tokenizer).save_pretrained(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("audio", nargs="?", help="an audio file (default: synthesized speech)")
    parser.add_argument("--model", help="a Whisper folder or hub repo id (default: a tiny random Whisper)")
    parser.add_argument("--language", default="en", help="language code or name, e.g. en, fr, german")
    parser.add_argument("--chunk-length", type=float, default=None, help="chunked batching: chunk length in seconds")
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        audio = Path(args.audio) if args.audio else speech_file(scratch)
        model = args.model
        if model is None:
            print("No --model given: using a TINY RANDOM Whisper, so the words are meaningless.")
            model = str(tiny_random_whisper(scratch / "tiny-whisper"))
        transcriber = pipeline("automatic-speech-recognition", model=model)
        info = soundfile.info(str(audio))
        print(f"{audio}: {info.frames / info.samplerate:.2f} s, {info.samplerate} Hz, {info.channels} channel(s)")
        options = dict(return_timestamps=True, language=args.language, batch_size=args.batch_size)
        if args.chunk_length:
            options["chunk_length_s"] = args.chunk_length
        result = transcriber(str(audio), **options)
        print(f"\ntext: {result['text']!r}\n")
        for chunk in result["chunks"]:
            start, end = chunk["timestamp"]
            print(f"[{start:6.2f} -> {end:6.2f}] {chunk['text']!r}")


if __name__ == "__main__":
    main()
