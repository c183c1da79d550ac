"""Fine-tuning tasks on the shared core and training loop: one module per task, each with a public
`build_task(cfg, tokenizer, accelerator) -> (Task, final evaluation, best-model metric)`.

    __main__.py              the hydra app over conf/finetune/ (`python -m finetune`)
    config.py                FinetuneConfig: the typed, validated settings of a run
    run.py                   run_finetune: tokenizer, the task table, the shared loop, best model, metrics.json
    common.py                what the tasks share: validation split and caps, padded batches, prediction, Evaluation
    files.py                 rows of .tsv / .csv / .json / .jsonl data files, checked
    classification.py        sequence classification and regression (GLUE), GPT-paper similarity
    qa.py                    extractive span QA (SQuAD v1.1 / v2.0)
    token_classification.py  one tag per word (CoNLL chunking, named entities)
    multiple_choice.py       a context and N choices (SWAG, HellaSwag, PIQA)
    squad_metric.py          the official SQuAD exact match / F1
    conlleval.py             the CoNLL chunk precision / recall / F1

May import: pretrain's model (heads, IGNORE_INDEX), the data collator helpers (pad_to_tensor,
next_token_labels, padding_id), tokenizer loading, the training loop and its checkpoints (Task, train,
load_pretrained), interop (build_model), config and errors. Never hydra globals: only __main__.py
touches hydra (through pretrain.hydra_utils); everything else takes a FinetuneConfig. Nothing in
pretrain/ imports finetune/.
"""
