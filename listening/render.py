"""One generation request rendered in a worker thread, one at a time, reported as events while it runs: the audio
of each sample as it is appended to its file (what generate_audio.py --stream writes), then the result."""

import io
import queue
import threading
import time
from dataclasses import asdict, dataclass

import numpy as np
import soundfile

# One generation at a time: the page's queue admits one, and a stopped one finishes its current step before the
# next one starts, so two never share the cores.
GENERATION_LOCK = threading.Lock()


@dataclass(frozen=True)
class Settings:
    """What the page's controls ask for, shared by every model of a comparison."""

    duration: float
    seed: int
    temperature: float
    top_k: int
    top_p: float
    num_samples: int = 1
    prompt: str | None = None  # an uploaded audio file to continue
    genre: str | None = None
    guidance_scale: float | None = None  # only with a condition
    long_form: str | None = None
    quantize: str | None = None
    compile_decoding: bool = False

    def file_prefix(self, model_name) -> str:
        """Sample file names carry the model and settings: hybrid-small_5s_seed0_t1_k250_p1[_g3][_int8]."""
        parts = [model_name, f"{self.duration:g}s", f"seed{self.seed}", f"t{self.temperature:g}", f"k{self.top_k}",
                 f"p{self.top_p:g}"]
        if self.prompt:
            parts.append("continued")
        if self.guidance_scale is not None:
            parts.append(f"g{self.guidance_scale:g}")
        if self.quantize:
            parts.append(self.quantize)
        return "_".join(part.replace("/", "-").replace(" ", "-") for part in parts)

    def summary(self) -> dict:
        fields = asdict(self)
        fields["prompt"] = fields["prompt"] is not None
        return fields


def check_settings(settings, checkpoint, samples_dir):
    """The request's plan for this checkpoint; ValueError with generate_audio.py's message for anything wrong."""
    from generation.pipeline import plan_generation
    from generation.request import check_options

    sampling = {"temperature": settings.temperature, "top_k": settings.top_k, "top_p": settings.top_p}
    check_options(samples_dir, num_samples=settings.num_samples, duration=settings.duration, overwrite=True,
                  genre=settings.genre, guidance_scale=settings.guidance_scale, quantize=settings.quantize,
                  long_form=settings.long_form, **sampling)
    return plan_generation(checkpoint.path, settings.duration, settings.prompt, sampling, settings.long_form, None,
                           None, settings.genre, settings.guidance_scale, settings.num_samples)


def render(models, checkpoint, settings, plan, paths, stop):
    """Generate `plan` with `checkpoint` into `paths` in a worker thread; yields ("loading",), ("started", time),
    ("audio", sample index, samples), and last ("done", GenerationResult) or ("failed", exception). Setting
    `stop` (or abandoning the iteration) ends the work at the next frame."""
    from generation.pipeline import write_samples

    events = queue.Queue()

    def work():
        try:
            with GENERATION_LOCK:
                if stop.is_set():
                    return events.put(("failed", KeyboardInterrupt()))
                events.put(("loading",))
                model = models.model(checkpoint, settings.quantize, settings.compile_decoding)
                codec = models.codec(checkpoint)
                events.put(("started", time.perf_counter()))
                result = write_samples(
                    model, codec, plan, paths, seed=settings.seed, batch_size=len(paths), long_form=settings.long_form,
                    progress=False, on_audio=lambda index, samples: events.put(("audio", index, samples)), stop=stop,
                )
            events.put(("done", result))
        except BaseException as error:  # reported to the page; an interrupt is a stop
            events.put(("failed", error))

    threading.Thread(target=work, name=f"render {checkpoint.name}", daemon=True).start()
    while True:
        event = events.get()
        try:
            yield event
        except GeneratorExit:  # the page closed the iteration: the work must not go on without it
            stop.set()
            raise
        if event[0] in ("done", "failed"):
            return


def wav_bytes(samples, sample_rate) -> bytes:
    """16-bit WAV bytes of float samples in [-1, 1]: one chunk of a live stream."""
    buffer = io.BytesIO()
    soundfile.write(buffer, np.clip(samples, -1.0, 1.0), sample_rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()
