"""A byte-level tokenizer built locally (no hub): one token per UTF-8 byte, plus BOS/EOS/PAD.

Used by the zoo models and by the tests' tiny models. It is a real `PreTrainedTokenizerFast`, so the
harness treats it exactly like any hub tokenizer (save_pretrained / AutoTokenizer round trip).
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from tokenizers.pre_tokenizers import ByteLevel
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<s>", "</s>", "<pad>")


def _byte_to_char() -> dict[int, str]:
    """The GPT-2 byte -> printable character map that tokenizers' ByteLevel pre-tokenizer uses."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    mapping, extra = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """Ids 0..255 are the bytes; 256 = <s> (BOS), 257 = </s> (EOS), 258 = <pad>."""
    chars = _byte_to_char()
    assert set(chars.values()) == set(ByteLevel.alphabet())
    vocab = {chars[b]: b for b in range(256)}
    for offset, token in enumerate(SPECIAL_TOKENS):
        vocab[token] = 256 + offset
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 256)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
