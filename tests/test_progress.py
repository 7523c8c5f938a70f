"""The progress line's arithmetic: a backfill's share done, partitions finished and ETA; a stream's lag."""
from apache_beam.utils.timestamp import MIN_TIMESTAMP

from transforms.progress import progress_line, watermark_text

END = {("orders", 0): 100, ("orders", 1): 50, ("web_sessions", 0): 250}


def test_a_backfill_line_gives_the_share_done_finished_partitions_and_the_eta():
    read = {("orders", 0): 100, ("orders", 1): 20, ("web_sessions", 0): 80}
    line = progress_line(200, elapsed_s=20, interval_records=100, interval_s=10, read=read, end=END, bounded=True)
    # 200 remaining at the last interval's 10/s
    assert line == "read 200 records; 10/s (average 10/s); 50% of 400; 1/3 partitions done; ETA 20 s"


def test_a_stream_line_gives_the_lag_of_each_partition_behind():
    read = {("orders", 0): 100, ("orders", 1): 45, ("web_sessions", 0): 240}
    line = progress_line(385, elapsed_s=10, interval_records=0, interval_s=5, read=read, end=END, bounded=False)
    assert line == "read 385 records; 0/s (average 38/s); lag 15 records (orders/1=5, web_sessions/0=10)"


def test_an_idle_interval_has_an_unknown_eta_and_a_caught_up_stream_no_lag():
    assert progress_line(10, 5, 0, 5, {("orders", 0): 10}, {("orders", 0): 20}, True).endswith("ETA unknown")
    assert progress_line(10, 5, 0, 5, {("orders", 0): 10}, {("orders", 0): 10}, False).endswith("lag 0 records (none)")


def test_watermark_text_before_and_after_every_partition_read():
    june = 1_780_272_000_000_000  # 2026-06-01 00:00:00 UTC
    assert watermark_text({}) == ""
    assert watermark_text({("orders", 0): june, ("orders", 1): june + 60_000_000}) == \
        "; source watermark 2026-06-01 00:00:00Z"
    # a partition that has read nothing holds Beam's minimum timestamp (year -290308): the line says so, no crash
    assert watermark_text({("orders", 0): june, ("orders", 1): MIN_TIMESTAMP.micros}) == \
        "; source watermark not yet set (a partition has read nothing)"
