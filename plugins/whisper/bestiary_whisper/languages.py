"""Whisper's languages and tasks: codes, names, and the special tokens that stand for them.

The order of :data:`LANGUAGES` is the order of the language tokens in the
vocabulary (``<|en|>`` comes right after ``<|startoftranscript|>``).
"""

from __future__ import annotations

from collections.abc import Mapping

from bestiary.errors import GenerationError

TASKS: tuple[str, ...] = ("translate", "transcribe")

#: language code -> English name, in vocabulary order.
LANGUAGES: dict[str, str] = dict(
    en="english", zh="chinese", de="german", es="spanish", ru="russian", ko="korean", fr="french",
    ja="japanese", pt="portuguese", tr="turkish", pl="polish", ca="catalan", nl="dutch", ar="arabic",
    sv="swedish", it="italian", id="indonesian", hi="hindi", fi="finnish", vi="vietnamese", he="hebrew",
    uk="ukrainian", el="greek", ms="malay", cs="czech", ro="romanian", da="danish", hu="hungarian",
    ta="tamil", no="norwegian", th="thai", ur="urdu", hr="croatian", bg="bulgarian", lt="lithuanian",
    la="latin", mi="maori", ml="malayalam", cy="welsh", sk="slovak", te="telugu", fa="persian",
    lv="latvian", bn="bengali", sr="serbian", az="azerbaijani", sl="slovenian", kn="kannada",
    et="estonian", mk="macedonian", br="breton", eu="basque", is_="icelandic", hy="armenian",
    ne="nepali", mn="mongolian", bs="bosnian", kk="kazakh", sq="albanian", sw="swahili", gl="galician",
    mr="marathi", pa="punjabi", si="sinhala", km="khmer", sn="shona", yo="yoruba", so="somali",
    af="afrikaans", oc="occitan", ka="georgian", be="belarusian", tg="tajik", sd="sindhi",
    gu="gujarati", am="amharic", yi="yiddish", lo="lao", uz="uzbek", fo="faroese", ht="haitian creole",
    ps="pashto", tk="turkmen", nn="nynorsk", mt="maltese", sa="sanskrit", lb="luxembourgish",
    my="myanmar", bo="tibetan", tl="tagalog", mg="malagasy", as_="assamese", tt="tatar", haw="hawaiian",
    ln="lingala", ha="hausa", ba="bashkir", jw="javanese", su="sundanese", yue="cantonese",
)
# "is" and "as" are Python keywords; the table above spells them with a trailing underscore.
LANGUAGES = {code.rstrip("_"): name for code, name in LANGUAGES.items()}

_ALIASES = {
    "burmese": "my", "valencian": "ca", "flemish": "nl", "haitian": "ht", "letzeburgesch": "lb",
    "pushto": "ps", "panjabi": "pa", "moldavian": "ro", "moldovan": "ro", "sinhalese": "si",
    "castilian": "es", "mandarin": "zh",
}

#: English name (and common alias) -> language code.
TO_LANGUAGE_CODE: dict[str, str] = {**{name: code for code, name in LANGUAGES.items()}, **_ALIASES}


def language_code(language: str) -> str:
    """Return the code ("fr") of a language given as a code, an English name ("French") or a token ("<|fr|>")."""
    text = language.strip().lower()
    if text.startswith("<|") and text.endswith("|>"):
        text = text[2:-2]
    if text in LANGUAGES:
        return text
    if text in TO_LANGUAGE_CODE:
        return TO_LANGUAGE_CODE[text]
    raise GenerationError(
        f"Unknown language {language!r}. Use a code such as 'en', 'fr', 'de' or an English name such as "
        f"'french'; Whisper knows {len(LANGUAGES)} languages (see bestiary_whisper.languages.LANGUAGES)."
    )


def language_token(language: str, known_tokens: Mapping[str, int] | None = None) -> str:
    """Return the special token ("<|fr|>") of a language given as a code, a name or a token."""
    text = language.strip().lower()
    if known_tokens and text in known_tokens:
        return text
    return f"<|{language_code(language)}|>"
