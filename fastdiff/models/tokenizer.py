"""A checkpoint's tokenizer: tokenizer.json (HF `tokenizers`) + tokenizer_config.json's chat template."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import jinja2
import jinja2.sandbox
from tokenizers import Tokenizer as HFTokenizer

EOT_TOKEN = "<|eot_id|>"
# the chat turn's end token of each family (an extra stop id next to EOS)
EOT_TOKENS = {"llada": "<|eot_id|>", "dream": "<|im_end|>", "sdar": "<|im_end|>"}


def _token_str(value) -> Optional[str]:
    """tokenizer_config.json stores specials as "str" or {"content": "str", ...}."""
    if isinstance(value, dict):
        return value.get("content")
    return value


class Tokenizer:
    """Encode/decode and chat rendering, with the special ids the decoding loop needs."""

    def __init__(self, tok: HFTokenizer, chat_template: Optional[str] = None,
                 bos_token: Optional[str] = None, eot_token: str = EOT_TOKEN) -> None:
        self._tok = tok
        self.chat_template = chat_template
        self.bos_token = bos_token
        self.eot_token_id = tok.token_to_id(eot_token)
        self.mask_token: Optional[str] = None  # tokenizer_config.json's mask_token

    @classmethod
    def from_dir(cls, path: str | Path, eot_token: str = EOT_TOKEN) -> Optional["Tokenizer"]:
        """The tokenizer of a checkpoint folder, or None when it has no tokenizer.json."""
        path = Path(path)
        if not (path / "tokenizer.json").is_file():
            return None
        tok = HFTokenizer.from_file(str(path / "tokenizer.json"))
        cfg = {}
        if (path / "tokenizer_config.json").is_file():
            with open(path / "tokenizer_config.json", encoding="utf-8") as f:
                cfg = json.load(f)
        out = cls(tok, cfg.get("chat_template"), _token_str(cfg.get("bos_token")), eot_token)
        out.mask_token = _token_str(cfg.get("mask_token"))
        return out

    def token_to_id(self, token: str) -> Optional[int]:
        return self._tok.token_to_id(token)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True,
                            **template_kwargs) -> str:
        """Render messages with the checkpoint's jinja chat_template (sandboxed, as HF does)."""
        if not self.chat_template:
            raise ValueError("this checkpoint's tokenizer_config.json has no chat_template; "
                             "pass plain prompts (chat=False)")
        for m in messages:
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise ValueError(f"chat messages must be dicts with 'role' and 'content', got {m!r}")

        def raise_exception(message: str):
            raise ValueError(f"chat template error: {message}")

        env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        template = env.from_string(self.chat_template)
        return template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                               **template_kwargs,
                               bos_token=self.bos_token or "")
