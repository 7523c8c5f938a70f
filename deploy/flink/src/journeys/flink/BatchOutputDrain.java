package journeys.flink;

import java.util.Optional;
import java.util.concurrent.Callable;
import org.apache.beam.sdk.fn.data.BeamFnDataInboundObserver;

/**
 * Takes a batch bundle's output from the SDK worker on a thread of its own while the task sends the bundle's input.
 *
 * <p>Beam 2.62's runner side queues at most 100 data messages of a bundle's output and takes them from that queue
 * only after the SDK has answered the bundle (SdkHarnessClient.ActiveBundle.close waits for the response, then calls
 * BeamFnDataInboundObserver.awaitCompletion). In Flink's batch mode a stage runs as one bundle per subtask, so a
 * stage whose output passes 100 messages (the Python SDK sends one per 10 MB) never ends: the SDK waits to send its
 * output and so never answers, and the task waits for the answer. A ten-million-event backfill stopped that way.
 *
 * <p>Only the bundles of FlinkExecutableStageFunction.mapPartition drain here (deploy/flink/patch_beam.py wraps
 * their opening in {@link #open}): their receivers take a lock around Flink's collector, and the task thread does not
 * touch the collector while the bundle is open. Its stateful reduce keeps the upstream order (its timer receiver
 * changes timers the task thread fires), and so do streaming operators, which must emit on their task thread.
 */
public final class BatchOutputDrain {
  private static final ThreadLocal<Boolean> OPENING = ThreadLocal.withInitial(() -> false);

  private final Thread thread;
  private volatile Exception failure;

  private BatchOutputDrain(String bundleId, BeamFnDataInboundObserver observer) {
    thread =
        new Thread(
            () -> {
              try {
                observer.awaitCompletion();
              } catch (Exception e) {
                failure = e;
              }
            },
            "journeys-output-drain-" + bundleId);
    thread.setDaemon(true);
    thread.start();
  }

  /** Opens a bundle (stageBundleFactory.getBundle) whose output drains on a thread of its own. */
  public static <T> T open(Callable<T> getBundle) throws Exception {
    OPENING.set(true);
    try {
      return getBundle.call();
    } finally {
      OPENING.remove();
    }
  }

  /** From ActiveBundle's constructor: the drain of its output when {@link #open} opens it, else null. */
  public static BatchOutputDrain startIfOpening(
      String bundleId, Optional<BeamFnDataInboundObserver> observer) {
    return OPENING.get() && observer.isPresent() ? new BatchOutputDrain(bundleId, observer.get()) : null;
  }

  /** In place of observer.awaitCompletion() in ActiveBundle.close: every output taken, or the first failure. */
  public static void awaitCompletion(BeamFnDataInboundObserver observer, BatchOutputDrain drain)
      throws Exception {
    if (drain == null) {
      observer.awaitCompletion();
      return;
    }
    drain.thread.join();
    if (drain.failure != null) {
      throw drain.failure;
    }
  }

  /** In place of observer.close() in ActiveBundle.close after a failure: the drain ends with it. */
  public static void close(BeamFnDataInboundObserver observer, BatchOutputDrain drain) throws Exception {
    observer.close();
    if (drain != null) {
      drain.thread.join();
    }
  }
}
