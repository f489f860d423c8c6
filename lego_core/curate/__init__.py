"""Stage 2, curate: detailed action descriptions from an LLM, resumable and never paying twice.

An OpenAI-compatible chat model turns each sample's short label plus its hand/object boxes into a
detailed description of the action (``curated.txt``), prompted with a system instruction and a few
hand-written in-context examples (the paper's scheme, GPT-3.5 there). Modules:

- `prompts`:  the system instruction, our in-context examples, ``--examples`` files, the messages
- `client`:   async OpenAI client with our own retries, backoff, Retry-After, budgets, token counts
- `cache`:    the append-only JSONL cache of accepted answers (sample key + request hash)
- `checks`:   response checks (empty, refusal, length, not about the action)
- `template`: the offline fallback that writes a plain description without an LLM
- `config`:   the run's settings (`CurateConfig`), their checks and the request each sample sends
- `run`:      the stage itself (`curate`), shards in -> new shards with ``curated.txt`` out

Importing this package is cheap: the openai package is imported only when a request is sent.
"""
