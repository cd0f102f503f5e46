"""The listening page: generate with one checkpoint and hear it while it renders, compare checkpoints side by side
(same prompt, seed and settings, each with its spectrogram), and a blind A/B test whose votes go to a JSON file.

Every generating event shares one queue slot (concurrency 1): the page shows a request's place in the queue, and
the Stop button ends the running one at its next frame. Mistakes come back as one message on the page.
"""

import dataclasses
import random
import threading
import time
import uuid
from pathlib import Path

import gradio as gr

from generation.pipeline import GenerationInterrupted, load_prompt_audio
from generation.request import LONG_FORM_MODES, output_paths
from listening.conditions import PAGE_CONTROLS, condition_arguments
from listening.preferences import read_preferences, record_preference, tally_markdown
from listening.render import Settings, check_settings, render, wav_bytes
from listening.spectrogram import write_spectrogram

MAX_SAMPLES = 4
DEFAULT_DURATION = 5.0
DEFAULT_GUIDANCE_SCALE = 3.0  # MusicGen's (generation.pipeline's default with a genre)
GENERATION_QUEUE = "generation"  # the concurrency id every generating event shares
NO_LONG_FORM = "off"
STOPPED = "Stopped: the unfinished samples were removed."


class Page:
    """The page's state on the server: checkpoints, loaded models, output folders and the running generations."""

    def __init__(self, checkpoints, models, output_dir, max_duration, int8, compile_decoding, live_stream):
        self.checkpoints = {checkpoint.name: checkpoint for checkpoint in checkpoints}
        self.models = models
        self.samples_dir = Path(output_dir) / "samples"
        self.blind_dir = Path(output_dir) / "blind"  # A/B files: names that say nothing about the model
        self.preferences_path = Path(output_dir) / "preferences.json"
        self.max_duration = max_duration
        self.int8 = int8  # None: not offered (not a CPU)
        self.compile_decoding = compile_decoding
        self.live_stream = live_stream
        self._stops = {}  # browser session -> the Event that stops its running generation
        self.hop_length = checkpoints[0].codec_identity["hop_length"]
        self.condition_arguments = condition_arguments([checkpoint.config for checkpoint in checkpoints])

    # ---- layout

    def build(self) -> gr.Blocks:
        names = list(self.checkpoints)
        checkpoints = list(self.checkpoints.values())
        with gr.Blocks(title="music-hybrid listening page", analytics_enabled=False) as page:
            gr.Markdown(f"# music-hybrid listening page\nCheckpoints: {', '.join(names)}")
            with gr.Row():
                with gr.Column(scale=1, min_width=300):
                    settings = self.settings_controls(checkpoints)
                with gr.Column(scale=2):
                    with gr.Tabs():
                        with gr.Tab("Generate"):
                            self.generate_tab(names, settings)
                        with gr.Tab("Compare", visible=len(names) > 1):  # both need two checkpoints
                            self.compare_tab(names, settings)
                        with gr.Tab("A/B test", visible=len(names) > 1):
                            self.blind_tab(names, settings)
        page.queue(max_size=32)
        return page

    def settings_controls(self, checkpoints) -> list:
        """The controls every tab reads, in the order of `settings_from`."""
        duration = gr.Slider(0.1, self.max_duration, value=min(DEFAULT_DURATION, self.max_duration), step=0.1,
                             label="Duration (seconds of new audio)")
        with gr.Row():
            seed = gr.Number(0, precision=0, label="Seed")
            num_samples = gr.Slider(1, MAX_SAMPLES, value=1, step=1, label="Samples")
        with gr.Row():
            temperature = gr.Number(1.0, label="Temperature", minimum=0.01, step=0.05)
            top_k = gr.Number(250, precision=0, label="Top-k (0: off)", minimum=0)
            top_p = gr.Number(1.0, label="Top-p (1: off)", minimum=0.01, maximum=1.0, step=0.05)
        configs = [checkpoint.config for checkpoint in checkpoints]
        conditions = [PAGE_CONTROLS[argument].component(configs, gr) for argument in self.condition_arguments]
        guidance = gr.Slider(1.0, 10.0, value=DEFAULT_GUIDANCE_SCALE, step=0.5, visible=bool(conditions),
                             label="Guidance scale (with a condition; 1: none)")
        prompt = gr.Audio(sources=["upload"], type="filepath", label="Audio prompt to continue (optional)")
        prompt.upload(self.check_upload, prompt, None, concurrency_limit=None)
        with gr.Accordion("Decoding", open=False):
            int8 = gr.Checkbox(bool(self.int8), label="int8 weights (CPU)", visible=self.int8 is not None)
            compiled = gr.Checkbox(self.compile_decoding,
                                   label="Compiled decoding (the first generation compiles for tens of seconds)")
            long_form = gr.Radio([NO_LONG_FORM, *LONG_FORM_MODES], value=NO_LONG_FORM,
                                 label="Long form (beyond the model's context)")
        self.condition_controls = conditions
        return [duration, seed, temperature, top_k, top_p, num_samples, prompt, *conditions, guidance, long_form,
                int8, compiled]

    def generate_tab(self, names, settings):
        with gr.Row():
            model = gr.Dropdown(names, value=names[0], label="Checkpoint", visible=len(names) > 1)
            generate = gr.Button("Generate", variant="primary")
            stop = gr.Button("Stop", variant="stop")
        status = gr.Markdown("Press Generate: the audio plays while it renders.")
        live = gr.Audio(label="Live (while it renders)", streaming=True, autoplay=True, interactive=False,
                        visible=self.live_stream)
        players = [gr.Audio(type="filepath", label=f"Sample {index + 1}", interactive=False, visible=index == 0,
                            elem_classes="finished-sample")
                   for index in range(MAX_SAMPLES)]
        files = gr.File(label="Download (WAV, 44.1 kHz; the settings are in the names)", file_count="multiple",
                        interactive=False)
        if self.condition_controls:
            model.change(self.conditions_for, model, self.condition_controls, concurrency_limit=None)
        event = generate.click(self.generate, [model, *settings], [status, live, *players, files],
                               concurrency_id=GENERATION_QUEUE, concurrency_limit=1)
        stop.click(self.stop, None, status, cancels=[event], concurrency_limit=None)

    def compare_tab(self, names, settings):
        chosen = gr.CheckboxGroup(names, value=names, label="Checkpoints to compare (same prompt, seed, settings)")
        with gr.Row():
            compare = gr.Button("Compare", variant="primary")
            stop = gr.Button("Stop", variant="stop")
        status = gr.Markdown("One sample per checkpoint, generated one after the other.")
        outputs = []
        with gr.Row():
            for name in names:
                with gr.Column(min_width=240):
                    outputs += [gr.Audio(type="filepath", label=name, interactive=False),
                                gr.Image(type="filepath", label=f"{name}: spectrogram", interactive=False,
                                         elem_classes="spectrogram")]
        event = compare.click(self.compare, [chosen, *settings], [status, *outputs],
                              concurrency_id=GENERATION_QUEUE, concurrency_limit=1)
        stop.click(self.stop, None, status, cancels=[event], concurrency_limit=None)

    def blind_tab(self, names, settings):
        gr.Markdown("Two checkpoints play the same settings with a fresh seed, unlabelled and in random order. Vote "
                    "for the one you prefer; the trial is added to the preferences file.")
        with gr.Row():
            first = gr.Dropdown(names, value=names[0], label="Checkpoint")
            second = gr.Dropdown(names, value=names[-1], label="against")
        new_pair = gr.Button("New blind pair", variant="primary")
        status = gr.Markdown()
        with gr.Row():
            sample_1 = gr.Audio(type="filepath", label="Sample 1", interactive=False)
            sample_2 = gr.Audio(type="filepath", label="Sample 2", interactive=False)
        with gr.Row():
            prefer_1 = gr.Button("Prefer sample 1", interactive=False)
            prefer_2 = gr.Button("Prefer sample 2", interactive=False)
        trial = gr.State(None)  # kept on the server: which model played first stays hidden from the browser
        tally = gr.Markdown(self.tally_text())
        new_pair.click(self.blind_pair, [first, second, *settings], [status, sample_1, sample_2, prefer_1, prefer_2,
                                                                     trial],
                       concurrency_id=GENERATION_QUEUE, concurrency_limit=1)
        for choice, button in enumerate((prefer_1, prefer_2)):
            button.click(self.vote_for(choice), trial, [status, tally, prefer_1, prefer_2, trial],
                         concurrency_limit=None)

    # ---- events

    def settings_from(self, values, num_samples=None) -> Settings:
        duration, seed, temperature, top_k, top_p, samples, prompt, *rest = values
        arguments = self.condition_arguments
        conditions = {argument: PAGE_CONTROLS[argument].request_value(value)
                      for argument, value in zip(arguments, rest, strict=False)}
        guidance, long_form, int8, compiled = rest[len(arguments):]
        conditioned = any(value is not None for value in conditions.values())
        return Settings(
            duration=float(duration), seed=int(seed or 0), temperature=float(temperature), top_k=int(top_k or 0),
            top_p=float(top_p), num_samples=int(num_samples or samples), prompt=prompt or None,
            guidance_scale=float(guidance) if conditioned else None,
            long_form=None if long_form in (None, NO_LONG_FORM) else long_form,
            quantize="int8" if int8 and self.int8 is not None else None, compile_decoding=bool(compiled),
            **conditions,
        )

    def plan(self, settings, checkpoint):
        """The request checked against the checkpoint, or one message naming it (compare checks several)."""
        try:
            return check_settings(settings, checkpoint, self.samples_dir)
        except (ValueError, FileNotFoundError) as error:
            message = f"{checkpoint.name}: {self.readable(error, settings.prompt)}"
            raise gr.Error(message, print_exception=False) from None

    def check_upload(self, path):
        """An unreadable upload is refused when it arrives, not only at Generate."""
        if path:
            try:
                load_prompt_audio(path, self.hop_length)
            except ValueError as error:
                raise gr.Error(self.readable(error, path), print_exception=False) from None

    def conditions_for(self, name):
        config = self.checkpoints[name].config
        updates = [PAGE_CONTROLS[argument].update_for(config, gr) for argument in self.condition_arguments]
        return updates[0] if len(updates) == 1 else updates

    def generate(self, request: gr.Request, name, *values):
        checkpoint = self.checkpoints[name]
        settings = self.settings_from(values)
        plan = self.plan(settings, checkpoint)
        paths = output_paths(self.samples_dir, settings.num_samples, settings.file_prefix(name), plan.genres)
        sample_rate = plan.codec_identity["sample_rate"]
        prompt_seconds = 0 if plan.prompt_audio is None else len(plan.prompt_audio) / sample_rate
        total = prompt_seconds + plan.new_samples / sample_rate
        rendered, started = 0.0, None
        for event in render(self.models, checkpoint, settings, plan, paths, self.new_stop(request)):
            if event[0] == "loading":
                compiling = " (the first generation also compiles its decoding step)" if settings.compile_decoding else ""
                yield [f"Loading {name}{compiling}..."] + [gr.skip()] * (MAX_SAMPLES + 2)
            elif event[0] == "started":
                started = event[1]
            elif event[0] == "audio" and event[1] == 0:
                rendered += len(event[2]) / sample_rate
                speed = max(rendered - prompt_seconds, 0) / max(time.perf_counter() - started, 1e-9)
                update = [f"Rendering {name}: {rendered:.1f} s of {total:.1f} s, {speed:.2f}x real time"]
                update.append(wav_bytes(event[2], sample_rate) if self.live_stream else gr.skip())
                yield update + [gr.skip()] * (MAX_SAMPLES + 1)
            elif event[0] == "failed":
                yield from self.failed(event[1], settings, MAX_SAMPLES + 3)
                return
            elif event[0] == "done":
                result = event[1]
                players = [gr.update(value=str(path), visible=True) for path in result.paths]
                players += [gr.update(value=None, visible=False)] * (MAX_SAMPLES - len(players))
                yield [f"{name}: {len(result.paths)} sample(s), {result.audio_seconds:.1f} s of new audio in "
                       f"{result.elapsed_seconds:.1f} s ({result.audio_seconds / result.elapsed_seconds:.2f}x real "
                       "time)", gr.skip(), *players, [str(path) for path in result.paths]]

    def compare(self, request: gr.Request, chosen, *values):
        names = [name for name in self.checkpoints if name in chosen]
        if len(names) < 2:
            raise gr.Error("choose at least two checkpoints to compare", print_exception=False)
        settings = self.settings_from(values, num_samples=1)
        plans = {name: self.plan(settings, self.checkpoints[name]) for name in names}  # every check before any work
        outputs = {name: [gr.update(value=None), gr.update(value=None)] for name in self.checkpoints}
        stop = self.new_stop(request)
        lines = []
        for name in names:
            yield [self._line(lines, f"Generating with {name}..."), *sum(outputs.values(), [])]
            path = output_paths(self.samples_dir, 1, settings.file_prefix(name), plans[name].genres)[0]
            result = None
            for event in render(self.models, self.checkpoints[name], settings, plans[name], [path], stop):
                if event[0] == "failed":
                    yield from self.failed(event[1], settings, 1 + 2 * len(self.checkpoints))
                    return
                if event[0] == "done":
                    result = event[1]
            lines[-1] = (f"{name}: {result.audio_seconds:.1f} s in {result.elapsed_seconds:.1f} s "
                         f"({result.audio_seconds / result.elapsed_seconds:.2f}x real time)")
            outputs[name] = [str(path), str(write_spectrogram(path, name))]
        yield [self._line(lines, f"Same seed ({settings.seed}) and settings for every checkpoint."),
               *sum(outputs.values(), [])]

    def blind_pair(self, request: gr.Request, first, second, *values):
        if first == second:
            raise gr.Error("choose two different checkpoints for a blind test", print_exception=False)
        seed = random.SystemRandom().randrange(2**31)
        settings = self.settings_from(values, num_samples=1)
        settings = dataclasses.replace(settings, seed=seed)
        played = random.SystemRandom().sample([first, second], 2)
        plans = {name: self.plan(settings, self.checkpoints[name]) for name in played}
        stop = self.new_stop(request)
        paths = []
        hidden = gr.update(interactive=False)
        for number, name in enumerate(played, start=1):
            yield [f"Generating sample {number} of 2...", None, None, hidden, hidden, None]
            path = self.blind_dir / f"{uuid.uuid4().hex}.wav"
            for event in render(self.models, self.checkpoints[name], settings, plans[name], [path], stop):
                if event[0] == "failed":
                    yield from self.failed(event[1], settings, 6)
                    return
            paths.append(str(path))
        trial = {"played": played, "settings": settings.summary()}
        shown = gr.update(interactive=True)
        yield ["Listen to both, then vote.", paths[0], paths[1], shown, shown, trial]

    def vote_for(self, choice):
        def vote(trial):
            if trial is None:
                raise gr.Error("generate a new blind pair first", print_exception=False)
            preferred = trial["played"][choice]
            trials = record_preference(self.preferences_path, trial["played"], preferred, trial["settings"])
            hidden = gr.update(interactive=False)
            reveal = (f"Sample 1 was **{trial['played'][0]}**, sample 2 was **{trial['played'][1]}**: you preferred "
                      f"**{preferred}** (trial {len(trials)}, saved to {self.preferences_path.name}).")
            return reveal, tally_markdown(trials), hidden, hidden, None

        return vote

    def stop(self, request: gr.Request):
        """Cancelling the page's event alone would leave its worker thread generating: it is told to stop too."""
        event = self._stops.get(request.session_hash)
        if event is not None:
            event.set()
        return STOPPED

    # ---- helpers

    def new_stop(self, request) -> threading.Event:
        event = threading.Event()
        self._stops[request.session_hash] = event
        return event

    def failed(self, error, settings, num_outputs):
        """A stop ends the event quietly; a mistake found late shows as a message; anything else is a bug."""
        if isinstance(error, (GenerationInterrupted, KeyboardInterrupt)):
            yield [STOPPED] + [gr.skip()] * (num_outputs - 1)
            return
        if isinstance(error, (ValueError, FileNotFoundError)):
            raise gr.Error(self.readable(error, settings.prompt), print_exception=False)
        raise error

    def tally_text(self) -> str:
        try:
            return tally_markdown(read_preferences(self.preferences_path))
        except ValueError as error:
            return f"The preferences file cannot be read: {error}"

    @staticmethod
    def readable(error, upload) -> str:
        """The error's one line, an uploaded file named by its own name rather than its path on the server."""
        message = " ".join(str(error).split())
        return message.replace(str(upload), Path(upload).name) if upload else message

    @staticmethod
    def _line(lines, text):
        lines.append(text)
        return "\n\n".join(lines)
