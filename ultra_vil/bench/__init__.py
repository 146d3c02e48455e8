"""Measuring tools: timing, peak memory, and the benchmark that scripts/benchmark.py runs with them.

One concern a file:

    timing          timings_ms, time_ms, compare_interleaved (contenders in turns), ratios, sync
    memory          peak_mem_mb / cpu_memory_mb (torch's allocations of one call), peak_memory (a whole block: CUDA
                    allocator peak or the process's peak RSS), with the profiler's log kept quiet
    guard           the float64 correctness check every mLSTM backend passes before it is timed; triton's status
    sizes           the sizes and rounds of a run (Preset), the interleaved comparison at them, the code version
    mlstm_sections  (a) mLSTM backends vs SDPA, and the dispatch grid behind `auto`'s thresholds
    model_sections  (b) one YOLO slot's mixers vs a transformer layer, (c) the ViL-T classifier against other
                    checkouts, (d) YOLOv8n vs YOLOv8n-ViL
    workers         contenders in child processes (another checkout, the official vision_lstm), one step per request
    report          benchmark.csv rows, the targets and mixer tables, benchmark.md / .png, merging runs

timing.py and memory.py import only torch and the standard library (workers.py loads them by path in children that
import another checkout's ultra_vil). Devices are resolved by ultra_vil.device; the dispatch table's format, rule,
reading and writing are ultra_vil.mlstm.dispatch's. Nothing is imported here: `import ultra_vil.bench.timing`
loads that module alone.
"""
