"""Keep credentials out of everything rrpo writes down (feedback records and exports).

Two checks, because secrets arrive both ways:

* by **key name**: a dict entry whose key looks like a credential (``api_key``,
  ``OPENAI_KEY``, ``private_key``, ``token``, ``pwd``, ``Authorization`` ...) is dropped;
* by **value**: a string that contains something shaped like a secret (``sk-...`` keys,
  ``Bearer ...`` tokens, AWS ``AKIA...`` ids, GitHub / Hugging Face / Slack tokens, JWTs,
  PEM private keys, ``password=...`` / ``token: ...`` assignments, long hex or base64
  right after a key-ish word, ``scheme://user:password@host``) has that part replaced by
  ``[REDACTED]``. This is what catches a secret that a framework folded into the passage
  text, a user pasted into a question, or an answer repeated.

Both are heuristics that err on the side of dropping: a lost metadata field costs less
than a leaked key.
"""

from __future__ import annotations

import re
from typing import Any

REDACTED = "[REDACTED]"

# Words that mark a key name as a credential wherever they appear in it.
_SECRET_WORDS = {
    "password", "passwd", "pwd", "passphrase", "secret", "secrets", "credential",
    "credentials", "cookie", "cookies", "authorization", "authorisation", "bearer",
    "apikey", "privatekey", "accesskey", "secretkey", "sessionid", "xsrf", "csrf",
}  # fmt: skip
# Words that mark it only as the last word: ``github_token`` but not ``token_count``.
_SECRET_LAST_WORDS = {"token", "auth", "pat", "signature"}
# ``*_key`` is a credential (openai_key, x-api-key) unless the word before says otherwise.
_PLAIN_KEY_PREFIXES = {
    "sort", "primary", "foreign", "cache", "partition", "group", "lookup", "index", "row",
    "doc", "document", "node", "ref", "dict", "map", "join", "hash", "music", "public",
}  # fmt: skip
# The same words glued together (``OPENAIAPIKEY``, ``accesstoken``).
_SECRET_JOINED = re.compile(
    r"apikey|privatekey|accesskey|secretkey|accesstoken|authtoken|refreshtoken|"
    r"sessiontoken|idtoken|clientsecret|password|passwd|credential|authori[sz]ation"
)

_KEYISH = r"(?:[_-]key|api[_-]?key|access[_-]?key|secret[_-]?key|private[_-]?key|client[_-]?secret|" \
          r"password|passwd|pwd|passphrase|secret|token|auth|credentials?)"
_VALUE_PATTERNS = [
    # PEM private keys, whole block.
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|\Z)", re.S),
    # Authorization headers ("Authorization: Basic ...") and bearer tokens anywhere.
    re.compile(r"(?i)(\bauthori[sz]ation[\"']?\s*[:=]\s*)(?:(?:bearer|basic|digest|token)\s+)?[^\s,;\"']+"),
    re.compile(r"(?i)(\bbearer\s+)[A-Za-z0-9\-._~+/]{16,}=*"),
    # OpenAI / Anthropic style keys, AWS access key ids, GitHub, Hugging Face, Slack, Google.
    re.compile(r"\bsk-(?:[A-Za-z0-9]+-)*[A-Za-z0-9_\-]{16,}"),
    re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA)[0-9A-Z]{16}\b"),
    re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,})"),
    re.compile(r"\bhf_[A-Za-z0-9]{30,}"),
    re.compile(r"\bxox[abposr]-[A-Za-z0-9\-]{10,}"),
    re.compile(r"\bAIza[0-9A-Za-z\-_]{35}"),
    # JSON web tokens.
    re.compile(r"\beyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}"),
    # user:password@ in URLs and connection strings.
    re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/\s@]+:)[^@\s/]+(?=@)"),
    # password=..., "token": "...", api_key: ... (keep the name, drop the value).
    re.compile(rf"(?i)(\b[\w\-]*{_KEYISH}[\"']?\s*[:=]\s*)(\"[^\"]*\"|'[^']*'|[^\s,;&\"']+)"),
    # A long hex / base64 run shortly after a key-ish word ("my key is 3f9a...").
    re.compile(
        rf"(?i)(\b(?:key|{_KEYISH})s?\b(?:\W+(?:is|was|are|reads|equals))?\W{{1,5}})"
        r"(?:[A-Fa-f0-9]{32,}|[A-Za-z0-9+/_\-]{32,}={0,2})"
    ),
]


def _key_words(key: str) -> list[str]:
    """``"openaiApiKey"`` / ``"OPENAI_API_KEY"`` / ``"x-api-key"`` -> lower-case words."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", key)
    return [w for w in re.split(r"[^A-Za-z0-9]+", spaced.lower()) if w]


def is_secret_key(key: Any) -> bool:
    """Whether a dict key names a credential (case, separators and camelCase ignored)."""
    words = _key_words(str(key))
    if not words:
        return False
    if any(w in _SECRET_WORDS for w in words) or _SECRET_JOINED.search("".join(words)):
        return True
    if words[-1] in _SECRET_LAST_WORDS:
        return True
    return words[-1] == "key" and len(words) > 1 and words[-2] not in _PLAIN_KEY_PREFIXES


# What each pattern above cannot match without (case-folded), as requirements that must
# all hold: any of some substrings, or a quick regex. Substring tests run at C speed and
# skip the regexes for ordinary prose, which is nearly every passage: redacting ten
# passages took ~7 ms with every regex run on every string, and the feedback store does
# it for every record it writes. Keep this list in step with _VALUE_PATTERNS.
_KEY_WORDS = ("key", "secret", "pass", "pwd", "token", "auth", "credential")
_LONG_RUN = re.compile(r"[A-Za-z0-9+/_\-]{32}")  # what the last pattern redacts is at least this
_NEEDLES: tuple[tuple[Any, ...], ...] = (
    (("-----begin",),),
    (("authori",),),
    (("bearer",),),
    (("sk-",),),
    (("akia", "asia", "agpa", "aida", "aroa"),),
    (("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),),
    (("hf_",),),
    (("xox",),),
    (("aiza",),),
    (("eyj",),),
    (("://",),),
    (_KEY_WORDS, (":", "=")),
    (_KEY_WORDS, _LONG_RUN),
)
assert len(_NEEDLES) == len(_VALUE_PATTERNS)


def _fold(text: str) -> str:
    """Lower case as loosely as IGNORECASE matches: casefold maps 'ſ' to 's' and the
    Kelvin sign to 'k'; dotless 'ı' needs its own step."""
    return text.casefold().replace("\u0131", "i")


def _may_match(requirements: tuple[Any, ...], text: str, lower: str) -> bool:
    for requirement in requirements:
        if isinstance(requirement, re.Pattern):
            if not requirement.search(text):
                return False
        elif not any(needle in lower for needle in requirement):
            return False
    return True


def redact_text(text: str) -> str:
    """``text`` with every secret-looking value replaced by ``[REDACTED]``."""
    lower = _fold(text)
    for pattern, requirements in zip(_VALUE_PATTERNS, _NEEDLES):
        if not _may_match(requirements, text, lower):
            continue  # what the pattern needs is absent: it cannot match
        if pattern.groups:
            new = pattern.sub(lambda m: m.group(1) + REDACTED, text)
        else:
            new = pattern.sub(REDACTED, text)
        if new != text:
            text, lower = new, _fold(new)
    return text


def redact(value: Any) -> Any:
    """A copy of ``value`` (str, dict, list, scalar) safe to store: credential keys
    dropped, secret-looking strings redacted, recursively."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {key: redact(item) for key, item in value.items() if not is_secret_key(key)}
    if isinstance(value, (list, tuple)):
        return [redact(item) for item in value]
    return value
