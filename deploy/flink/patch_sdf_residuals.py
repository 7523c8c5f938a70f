"""Routes Beam 2.62's portable Flink runner's SDF residual state through journeys.flink.SdfResiduals
(src/journeys/flink/SdfResiduals.java says why: apache/beam#27648). The pom unpacks the two upstream sources; this
rewrites their three call sites and fails the build when any is not found exactly once (a different Beam version).

    python3 patch_sdf_residuals.py UPSTREAM_DIR OUT_DIR
"""
import re
import shutil
import sys
from pathlib import Path

HANDLER = "org/apache/beam/runners/fnexecution/control/BundleCheckpointHandlers.java"
OPERATOR = "org/apache/beam/runners/flink/translation/wrappers/streaming/ExecutableStageDoFnOperator.java"

EDITS = {
    HANDLER: [
        # a timer id that no restored timer has
        (r"String id = idGenerator\.getId\(\);", "String id = journeys.flink.SdfResiduals.newId();"),
        # the residual into the shared map (the arguments that follow complete the call)
        (r"stateInternals\s*\.state\(stateNamespace, StateTags\.value\(tag, residualCoder\)\)\s*\.write\(",
         "journeys.flink.SdfResiduals.put(stateInternals, stateNamespace, tag, residualCoder,"),
    ],
    OPERATOR: [
        # a fired timer's residual out of the map
        (r"WindowedValue stateValue =\s*keyedStateInternals\.state\(namespace, StateTags\.value\(timerId, "
         r"residualCoder\)\)\.read\(\);\s*processElement\(stateValue\);",
         "WindowedValue stateValue = journeys.flink.SdfResiduals.take(keyedStateInternals, namespace, timerId, "
         "residualCoder);\n        if (stateValue != null) {\n          processElement(stateValue);\n        }"),
    ],
}


def main(upstream: Path, out: Path) -> None:
    for path, edits in EDITS.items():
        text = (upstream / path).read_text()
        for pattern, replacement in edits:
            text, count = re.subn(pattern, lambda _: replacement, text)
            if count != 1:
                raise SystemExit(f"{path}: expected one match of {pattern!r}, found {count}")
        (out / path).parent.mkdir(parents=True, exist_ok=True)
        (out / path).write_text(text)
    shutil.copytree(Path(__file__).parent / "src", out, dirs_exist_ok=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
