"""Patches five classes of Beam 2.62's portable Flink runner; the helpers in src/journeys/flink/ say why:
- SDF residual state goes through journeys.flink.SdfResiduals (apache/beam#27648: residuals never cleared);
- a batch stage's output drains on a thread of its own while its input is sent (journeys.flink.BatchOutputDrain:
  otherwise a stage whose output passes 100 data messages per subtask never ends);
- a stage subtask's SDK worker follows the subtask's index (journeys.flink.SubtaskEnvironment: otherwise both
  subtasks of a stage can share one worker while the other waits).
The pom unpacks the upstream sources; this rewrites their call sites and fails the build when any is not found as
often as expected (a different Beam version).

    python3 patch_beam.py UPSTREAM_DIR OUT_DIR
"""
import re
import shutil
import sys
from pathlib import Path

HANDLER = "org/apache/beam/runners/fnexecution/control/BundleCheckpointHandlers.java"
OPERATOR = "org/apache/beam/runners/flink/translation/wrappers/streaming/ExecutableStageDoFnOperator.java"
CLIENT = "org/apache/beam/runners/fnexecution/control/SdkHarnessClient.java"
BATCH_STAGE = "org/apache/beam/runners/flink/translation/functions/FlinkExecutableStageFunction.java"
BUNDLE_FACTORY = "org/apache/beam/runners/fnexecution/control/DefaultJobBundleFactory.java"
OPEN_STAGE = (r"stageBundleFactory = stageContext\.getStageBundleFactory\(executableStage\);",
              "stageBundleFactory = journeys.flink.SubtaskEnvironment.opening("
              "getRuntimeContext().getIndexOfThisSubtask(), () -> stageContext.getStageBundleFactory(executableStage));",
              1)

EDITS = {
    HANDLER: [
        # a timer id that no restored timer has
        (r"String id = idGenerator\.getId\(\);", "String id = journeys.flink.SdfResiduals.newId();", 1),
        # the residual into the shared map (the arguments that follow complete the call)
        (r"stateInternals\s*\.state\(stateNamespace, StateTags\.value\(tag, residualCoder\)\)\s*\.write\(",
         "journeys.flink.SdfResiduals.put(stateInternals, stateNamespace, tag, residualCoder,", 1),
    ],
    OPERATOR: [
        # a fired timer's residual out of the map
        (r"WindowedValue stateValue =\s*keyedStateInternals\.state\(namespace, StateTags\.value\(timerId, "
         r"residualCoder\)\)\.read\(\);\s*processElement\(stateValue\);",
         "WindowedValue stateValue = journeys.flink.SdfResiduals.take(keyedStateInternals, namespace, timerId, "
         "residualCoder);\n        if (stateValue != null) {\n          processElement(stateValue);\n        }", 1),
        OPEN_STAGE,
    ],
    CLIENT: [
        (r"private final Optional<BeamFnDataInboundObserver> beamFnDataInboundObserver;",
         "private final Optional<BeamFnDataInboundObserver> beamFnDataInboundObserver;\n"
         "      private final journeys.flink.BatchOutputDrain outputDrain;", 1),
        (r"this\.beamFnDataInboundObserver = beamFnDataInboundObserver;",
         "this.beamFnDataInboundObserver = beamFnDataInboundObserver;\n"
         "        this.outputDrain = journeys.flink.BatchOutputDrain.startIfOpening(bundleId, beamFnDataInboundObserver);",
         1),
        (r"beamFnDataInboundObserver\.get\(\)\.awaitCompletion\(\);",
         "journeys.flink.BatchOutputDrain.awaitCompletion(beamFnDataInboundObserver.get(), outputDrain);", 1),
        (r"beamFnDataInboundObserver\.get\(\)\.close\(\);",
         "journeys.flink.BatchOutputDrain.close(beamFnDataInboundObserver.get(), outputDrain);", 1),
    ],
    BATCH_STAGE: [
        # both bundles of mapPartition (its input's, and its SDF timers'); reduce's take other arguments
        (r"stageBundleFactory\.getBundle\(\s*receiverFactory,\s*stateRequestHandler,\s*progressHandler,\s*"
         r"finalizationHandler,\s*bundleCheckpointHandler\)",
         "journeys.flink.BatchOutputDrain.open(() -> stageBundleFactory.getBundle(receiverFactory, "
         "stateRequestHandler, progressHandler, finalizationHandler, bundleCheckpointHandler))", 2),
        OPEN_STAGE,
    ],
    BUNDLE_FACTORY: [
        (r"this\.environmentIndex = stageBundleFactoryCount\.getAndIncrement\(\) % environmentCaches\.size\(\);",
         "this.environmentIndex = journeys.flink.SubtaskEnvironment.index(stageBundleFactoryCount, "
         "environmentCaches.size());", 1),
    ],
}


def main(upstream: Path, out: Path) -> None:
    for path, edits in EDITS.items():
        text = (upstream / path).read_text()
        for pattern, replacement, expected in edits:
            text, count = re.subn(pattern, lambda _: replacement, text)
            if count != expected:
                raise SystemExit(f"{path}: expected {expected} match(es) of {pattern!r}, found {count}")
        (out / path).parent.mkdir(parents=True, exist_ok=True)
        (out / path).write_text(text)
    shutil.copytree(Path(__file__).parent / "src", out, dirs_exist_ok=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
