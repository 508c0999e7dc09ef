"""Neural Low-rank adapter Search verbs: ``train`` a super-adapter, ``search`` it for a sub-adapter."""

from __future__ import annotations

from .common import claim, common_flags, resumable_output
from .registry import Call, Flag, verb


@verb(
    "train",
    help="train an elastic super-adapter with NLS (or plain LoRA)",
    description="Attach elastic LoRA adapters to the base (--model, typically a sparsified checkpoint), "
    "train them with Neural Low-rank adapter Search, and write super_adapter/ (peft folder + search space), "
    "sub_adapter_heuristic/ (a stock peft LoRA folder) and train_report.json.",
    flags=(
        *common_flags(),
        Flag(("--resume",), action="store_true", help="continue from the newest checkpoint in --output"),
        Flag(
            ("--algorithm",),
            dest="train_algorithm",
            key="bootstrapNAS.training.algorithm",
            choices=("nls", "lora"),
            help="override bootstrapNAS.training.algorithm",
        ),
        Flag(
            ("--max-steps",),
            key="bootstrapNAS.training.max_steps",
            type=int,
            help="override bootstrapNAS.training.max_steps",
        ),
    ),
)
def train(call: Call) -> int:
    """Train the elastic adapters on the base (one or several processes)."""
    from .. import distributed
    from ..pipeline import check_trainable_base, train
    from ..preflight import check_config_against_model, check_data

    config, output = call.config, call.output
    check_config_against_model(config, train=True)
    check_trainable_base(config)
    check_data(config, train=True)
    with distributed.main_process_first(resumable_output(call, "train", "train_config.json")):
        report = train(config, output, resume=call.args.resume, progress=call.progress)
    if distributed.is_main_process():
        print(
            f"trained {report['algorithm']} for {report['steps']} steps (loss {report['train_loss']:.4f}) "
            f"in {report['processes']} process(es); wrote {output / 'super_adapter'} and "
            f"{output / 'sub_adapter_heuristic'}"
        )
    return 0


@verb(
    "search",
    help="choose a sub-adapter: heuristic, hill-climbing or NSGA-II",
    description="Search the trained super-adapter (--super-adapter) on the base (--model) with "
    "bootstrapNAS.search on the validation split; writes evaluations.jsonl/.csv, pareto.json, search.png, "
    "search_report.json and sub_adapter/ (the chosen one, a stock peft folder). Rerunning on the same "
    "--output with --resume continues a killed search without re-evaluating anything.",
    flags=(
        *common_flags(super_adapter=True),
        Flag(
            ("--algorithm",),
            dest="search_algorithm",
            key="bootstrapNAS.search.algorithm",
            choices=("heuristic", "hill_climbing", "NSGA2", "RNSGA2"),
            help="override bootstrapNAS.search.algorithm",
        ),
        Flag(
            ("--num-evals",),
            key="bootstrapNAS.search.num_evals",
            type=int,
            help="override bootstrapNAS.search.num_evals",
        ),
        Flag(
            ("--latency-model",),
            help="latency_model.json (or its folder) written by `latency`: needed for bootstrapNAS.search.cost 'latency'",
        ),
        Flag(
            ("--plain-quality",),
            type=float,
            help="the plain alternative's validation quality (a run's report.json, search.floor.quality): the "
            "floor of bootstrapNAS.search.select 'cheapest_above_plain'",
        ),
        Flag(("--resume",), action="store_true", help="continue a search in --output from its log"),
    ),
)
def search(call: Call) -> int:
    """Search the super-adapter for a sub-adapter and write the chosen one."""
    from .. import distributed
    from ..pipeline import latency_predictor, search
    from ..preflight import check_data

    args, config, output = call.args, call.config, call.output
    check_data(config, train=True)
    latency_predictor(config, args.latency_model)  # checked before the output is claimed
    s = config.bootstrapNAS.search
    if s.select == "cheapest_above_plain" and args.plain_quality is None:
        raise ValueError(
            "bootstrapNAS.search.select 'cheapest_above_plain' needs the plain alternative's validation quality: "
            "pass --plain-quality (`run` measures it itself)"
        )
    if args.plain_quality is not None and s.resolved_select(plain_measured=True) != "cheapest_above_plain":
        raise ValueError(
            f"--plain-quality is given but nothing uses it: bootstrapNAS.search.select is {s.select!r} with "
            f"algorithm {s.algorithm!r}; it is the floor of NSGA-II's pick with select 'auto' or "
            "'cheapest_above_plain', so set those or drop --plain-quality"
        )
    # No input fingerprints here: the evaluation log keys every measurement by its inputs, so a
    # resume on another base or super-adapter measures anew instead of reusing.
    searching = claim(call, "search", args.super_adapter, args.latency_model, prelude=["search_meta.json"])
    with distributed.main_process_first(searching):
        report = search(
            config, output, args.super_adapter, progress=call.progress, latency_model=args.latency_model,
            plain_quality=args.plain_quality,
        )  # fmt: skip
    if not distributed.is_main_process():
        return 0
    reused = f", {report['not_reused']} logged on other inputs not reused" if report["not_reused"] else ""
    print(
        f"{report['algorithm']}: chose quality {report['chosen_quality']:.4f} at cost {report['chosen_cost']:.4g} "
        f"after {report['evaluations_used']} evaluations ({report['new_evaluations']} new{reused}, "
        f"{report['wall_s']:.0f} s); wrote {output / 'sub_adapter'}, {output / 'search.png'}"
    )
    return 0
