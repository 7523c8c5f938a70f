package journeys.flink;

import java.security.SecureRandom;
import java.util.concurrent.atomic.AtomicLong;
import org.apache.beam.runners.core.StateInternals;
import org.apache.beam.runners.core.StateNamespace;
import org.apache.beam.runners.core.StateTags;
import org.apache.beam.runners.core.StateTag;
import org.apache.beam.sdk.coders.Coder;
import org.apache.beam.sdk.coders.StringUtf8Coder;
import org.apache.beam.sdk.state.MapState;
import org.apache.beam.sdk.state.ValueState;
import org.apache.beam.sdk.util.WindowedValue;

/**
 * Where the portable Flink runner keeps a splittable DoFn's self-checkpoint (a residual) until its timer fires.
 *
 * <p>Beam 2.62 stores each residual as a ValueState of its own name and never clears it (apache/beam#27648): a
 * polling source's checkpointed state grows by the minute, and every name is one more registered state (a RocksDB
 * column family). Here residuals share one MapState, keyed by their timer id, and an entry is removed when its timer
 * fires: the state holds the residuals still pending, whatever the job's age. deploy/flink/patch_beam.py
 * routes the runner's two call sites here.
 */
public final class SdfResiduals {
  private static final String STATE_NAME = "sdf_residuals";
  // Timer ids must not repeat across restores: a restored pending timer keeps its id, and the runner's counter
  // starts again at 1 in every operator instance.
  private static final String INSTANCE = Long.toHexString(new SecureRandom().nextLong());
  private static final AtomicLong NEXT = new AtomicLong();

  private SdfResiduals() {}

  public static String newId() {
    return INSTANCE + "-" + NEXT.incrementAndGet();
  }

  private static <T> StateTag<MapState<String, WindowedValue<T>>> tag(Coder<WindowedValue<T>> coder) {
    return StateTags.map(STATE_NAME, StringUtf8Coder.of(), coder);
  }

  public static <T> void put(
      StateInternals state,
      StateNamespace namespace,
      String timerId,
      Coder<WindowedValue<T>> coder,
      WindowedValue<T> residual) {
    state.state(namespace, tag(coder)).put(timerId, residual);
  }

  /** The residual of a fired timer, removed from state; null when there is none. */
  public static <T> WindowedValue<T> take(
      StateInternals state, StateNamespace namespace, String timerId, Coder<WindowedValue<T>> coder) {
    MapState<String, WindowedValue<T>> residuals = state.state(namespace, tag(coder));
    WindowedValue<T> residual = residuals.get(timerId).read();
    if (residual != null) {
      residuals.remove(timerId);
      return residual;
    }
    // A snapshot taken before this change holds its pending residuals the old way, one ValueState each.
    ValueState<WindowedValue<T>> legacy = state.state(namespace, StateTags.value(timerId, coder));
    residual = legacy.read();
    legacy.clear();
    return residual;
  }
}
