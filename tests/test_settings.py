import json

from app.settings import AppSettings, Preset, load_settings, save_settings


def test_settings_round_trip(tmp_path):
    path = tmp_path / "conf" / "settings.json"
    settings = AppSettings(
        library_folder="/data/lib", default_model="demo", precision="bfloat16", low_memory=True,
        compute_device="cpu", preview_every=3, output_format="webp", prompt_prefix="photo of",
        prompt_suffix="8k", user_presets=[Preset("Mine", {"steps": 30, "cfg_scale": 6.5})], allow_pickle=True,
    )
    save_settings(settings, path)
    assert load_settings(path) == settings


def test_missing_or_broken_file_gives_defaults(tmp_path):
    assert load_settings(tmp_path / "absent.json") == AppSettings()
    (tmp_path / "broken.json").write_text("{not json")
    assert load_settings(tmp_path / "broken.json") == AppSettings()
    (tmp_path / "list.json").write_text("[1, 2]")
    assert load_settings(tmp_path / "list.json") == AppSettings()


def test_bad_values_fall_back_one_by_one(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({
        "precision": "float64", "low_memory": "yes", "allow_pickle": 1, "preview_every": -2, "output_format": "gif",
        "default_model": "kept", "unknown_key": 1, "user_presets": [{"name": "ok", "params": {}}, {"bad": 1}],
    }))
    loaded = load_settings(path)
    assert loaded.precision == "float16" and loaded.low_memory is False and loaded.allow_pickle is False
    assert loaded.preview_every == 1 and loaded.output_format == "png"
    assert loaded.default_model == "kept"
    assert loaded.user_presets == [Preset("ok", {})]
