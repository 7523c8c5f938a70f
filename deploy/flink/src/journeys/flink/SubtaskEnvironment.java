package journeys.flink;

import java.util.concurrent.atomic.AtomicInteger;
import java.util.function.Supplier;

/**
 * Chooses a stage subtask's SDK worker by the subtask's index, so the subtasks of one stage run on different workers.
 *
 * <p>Beam 2.62's DefaultJobBundleFactory gives each stage instance the next of its `sdk_worker_parallelism`
 * environments in the order the instances open. Tasks of several stages open at once, so both subtasks of one stage
 * can draw the same worker (with two workers, instances opening as A0, B0, A1, B1 put B0 and B1 on the second) and
 * that stage then runs on one Python process, one core, while the other worker waits. deploy/flink/patch_beam.py
 * wraps the opening in FlinkExecutableStageFunction and ExecutableStageDoFnOperator in {@link #opening}, and the
 * factory's choice in {@link #index}.
 */
public final class SubtaskEnvironment {
  private static final ThreadLocal<Integer> SUBTASK = new ThreadLocal<>();

  private SubtaskEnvironment() {}

  /** Opens a stage instance's bundle factory for subtask `subtask` (on the task's thread). */
  public static <T> T opening(int subtask, Supplier<T> open) {
    SUBTASK.set(subtask);
    try {
      return open.get();
    } finally {
      SUBTASK.remove();
    }
  }

  /** The environment of the stage instance being opened: its subtask's, else the next in turn. */
  public static int index(AtomicInteger opened, int environments) {
    Integer subtask = SUBTASK.get();
    return Math.floorMod(subtask != null ? subtask : opened.getAndIncrement(), environments);
  }
}
