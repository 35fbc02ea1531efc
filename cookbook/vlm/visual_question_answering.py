"""Ask a vision-language model (Qwen2-VL) a question about a photo.

    python cookbook/vlm/visual_question_answering.py                          # tiny random Qwen2-VL, scikit-image's cat
    python cookbook/vlm/visual_question_answering.py --checkpoint FOLDER      # a real Qwen2-VL folder (transformers' format)
    python cookbook/vlm/visual_question_answering.py --image photo.jpg --question "How many cups are there?"

The photo and the question go into a chat message; the model's processor
renders it with Qwen2-VL's chat template, resizes the photo to a multiple of
28 pixels within its pixel budget, cuts it into 14x14 patches and expands the
image placeholder to one token per 2x2 block of patches; the model answers
with greedy decoding through ``pipeline("image-text-to-text")``.

Without ``--checkpoint`` the script builds a *tiny random* Qwen2-VL (hidden
size 32, two vision blocks, two decoder layers, a 320-token tokenizer) because
this machine reaches no model hub: everything up to the answer is real (the
photo, the preprocessing, the vision tokens, the rotary positions, the
decoding), but the answer itself is noise. Point ``--checkpoint`` at a
downloaded ``Qwen/Qwen2-VL-2B-Instruct`` folder for a real answer.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import PIL.Image
import torch

from bestiary.pipelines import pipeline

PHOTOS = ("chelsea", "astronaut", "coffee", "camera")


def load_photo(path: str | None, name: str) -> PIL.Image.Image:
    """The photo to ask about: a file, or one of scikit-image's photos."""
    if path:
        return PIL.Image.open(path).convert("RGB")
    import skimage.data

    return PIL.Image.fromarray(getattr(skimage.data, name)()).convert("RGB")


def checkpoint_folder(checkpoint: str | None, workdir: Path) -> tuple[str, bool]:
    """The folder to load, and whether it is the tiny random stand-in."""
    if checkpoint:
        return checkpoint, False
    from bestiary_qwen2_vl.tiny import build_tiny_checkpoint

    return str(build_tiny_checkpoint(workdir / "tiny-qwen2-vl", seed=0)), True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a Qwen2-VL folder in transformers' format (default: tiny random model)")
    parser.add_argument("--image", help="a photo to ask about (default: a scikit-image photo)")
    parser.add_argument("--photo", choices=PHOTOS, default="chelsea", help="which scikit-image photo (default: chelsea)")
    parser.add_argument("--question", default="What animal is in this picture, and what is it doing?")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    args = parser.parse_args()

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as workdir:
        folder, is_tiny = checkpoint_folder(args.checkpoint, Path(workdir))
        if is_tiny:
            print("NOTE: no Qwen2-VL weights are reachable offline, so this runs a TINY RANDOM Qwen2-VL.")
            print("      The preprocessing and decoding are real; the answer is noise. Use --checkpoint for a real model.\n")
        started = time.perf_counter()
        vqa = pipeline("image-text-to-text", folder)
        print(f"loaded {type(vqa.model).__name__} from {folder if not is_tiny else 'a tiny random folder'} "
              f"in {time.perf_counter() - started:.1f} s")

        photo = load_photo(args.image, args.photo)
        messages = [{"role": "user", "content": [{"type": "image", "image": photo}, {"type": "text", "text": args.question}]}]

        # What the processor makes of the photo (the pipeline does this itself; shown here for the numbers).
        processor = vqa.processor
        inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                               return_tensors="pt")
        frames, rows, cols = inputs["image_grid_thw"][0].tolist()
        merge = processor.image_processor.merge_size
        print(f"photo: {photo.width}x{photo.height} px -> resized to {cols * 14}x{rows * 14} px, "
              f"{rows}x{cols} patches of 14x14 -> {rows * cols // merge**2} vision tokens")
        print(f"prompt: {inputs['input_ids'].shape[1]} tokens, of which "
              f"{int((inputs['input_ids'] == processor.image_token_id).sum())} are image placeholders")

        started = time.perf_counter()
        answer = vqa(text=messages, max_new_tokens=args.max_new_tokens, do_sample=False, return_full_text=False)
        elapsed = time.perf_counter() - started
        print(f"\nQ: {args.question}")
        print(f"A: {answer[0]['generated_text']!r}")
        print(f"({elapsed:.2f} s{', tiny random model: the answer is noise' if is_tiny else ''})")


if __name__ == "__main__":
    main()
