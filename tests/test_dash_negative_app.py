"""The app's Settings option for `-` lines (off by default): it reaches the request and survives a restart."""

from app.settings import AppSettings, load_settings
from app_support import QT_MARKS
from test_app_settings_window import open_window, settings_action

pytestmark = QT_MARKS


def test_the_option_is_off_by_default_and_reaches_the_request(qtbot, tmp_path):
    assert not AppSettings().dash_lines_negative
    path, default_library = tmp_path / "settings.json", tmp_path / "appdata"
    window, _, plugin = open_window(qtbot, path, default_library)
    assert not window.build_request().dash_lines_negative
    settings_action(window).trigger()
    dialog = plugin.dialog
    assert not dialog.dash_lines_check.isChecked()
    dialog.dash_lines_check.setChecked(True)
    dialog.accept()
    assert window.build_request().dash_lines_negative
    window.close()
    assert load_settings(path).dash_lines_negative
    assert plugin.open().dash_lines_check.isChecked()
