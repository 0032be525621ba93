"""The paper's 13 video-QA benchmark settings (Table 1), by the name `python -m stts_jax.benchmarks.convert`
takes: the reader of each one's published files and the average it counts in (short or long videos)."""

from __future__ import annotations

from stts_jax.benchmarks import long_video, short_video
from stts_jax.benchmarks.records import Benchmark

_VIDEOMME = "videomme/test-00000-of-00001.parquet (lmms-eval/Video-MME); --videos: data/"
_LONGVIDEOBENCH = "lvb_val.json or validation-00000-of-00001.parquet (longvideobench/LongVideoBench); --videos: videos/"

BENCHMARKS = {
    b.name: b
    for b in (
        Benchmark(
            "nextqa",
            "short",
            "MC/test-00000-of-00001.parquet (lmms-eval/NExTQA) or test.csv / val.csv (doc-doc/NExT-QA, with "
            "map_vid_vidorID.json beside it); --videos: NExTVideo/",
            short_video.nextqa,
        ),
        Benchmark(
            "perceptiontest",
            "short",
            "mc_question_val/validation-00000-of-00001.parquet (lmms-eval/PerceptionTest_Val) or all_valid.json "
            "(google-deepmind/perception_test); --videos: videos/",
            short_video.perceptiontest,
        ),
        Benchmark(
            "mvbench",
            "short",
            "json/ (OpenGVLab/MVBench, 20 task files); --videos: video/",
            short_video.mvbench,
        ),
        Benchmark("tomato", "short", "data/ (yale-nlp/TOMATO, 6 files); --videos: videos/", short_video.tomato),
        Benchmark(
            "motionbench",
            "short",
            "video_info.meta.jsonl (THUDM/MotionBench); --videos: the folder of its videos",
            short_video.motionbench,
        ),
        Benchmark(
            "tempcompass",
            "short",
            "questions/ (llyx97/TempCompass) or the folder of <task>/test-*.parquet (lmms-eval/TempCompass); "
            "--videos: videos/",
            short_video.tempcompass,
        ),
        Benchmark("videomme", "long", _VIDEOMME, long_video.videomme),
        Benchmark(
            "videomme_subtitles",
            "long",
            _VIDEOMME + "; --subtitles: subtitle/ (.srt files) or Molmo2's subtitles.json (allenai/Molmo2-VideoMME)",
            long_video.videomme,
            subtitles=True,
        ),
        Benchmark("longvideobench", "long", _LONGVIDEOBENCH, long_video.longvideobench),
        Benchmark(
            "longvideobench_subtitles",
            "long",
            _LONGVIDEOBENCH + "; --subtitles: subtitles/",
            long_video.longvideobench,
            subtitles=True,
        ),
        Benchmark(
            "mlvu",
            "long",
            "MLVU/json/ (MLVU/MVLU dev set; --videos: MLVU/video/) or test-ground-truth/test_mcq_gt.json "
            "(MLVU/MLVU_Test; --videos: MLVU_Test/video/)",
            long_video.mlvu,
        ),
        Benchmark(
            "lvbench", "long", "video_info.meta.jsonl (zai-org/LVBench); --videos: its videos", long_video.lvbench
        ),
        Benchmark(
            "videoevalpro",
            "long",
            "data/test-00000-of-00001.parquet (TIGER-Lab/VideoEval-Pro, multiple choice); --videos: videos_filtered/",
            long_video.videoevalpro,
        ),
    )
}
