"""Label Studio with its default network policy refuses a backend on 127.0.0.1; we say why."""

import pytest

from annotator.errors import AnnotatorError
from annotator.labelstudio.sync import connect
from tests.integration.label_studio import LabelStudioServer

pytestmark = pytest.mark.integration


def test_default_label_studio_refuses_a_loopback_backend_and_we_name_the_fix(backend_server):
    strict = LabelStudioServer(allow_local_backends=False).start()
    try:
        from label_studio_sdk import LabelStudio

        ls = LabelStudio(base_url=strict.url, api_key=strict.token)
        project = ls.projects.create(title="strict", label_config='<View><Text name="t" value="$text"/>'
                                     '<Choices name="c" toName="t"><Choice value="a"/><Choice value="b"/></Choices></View>')
        with pytest.raises(AnnotatorError, match="USE_DEFAULT_BANNED_SUBNETS=false"):
            connect(backend_server.store, backend_server.settings, url=strict.url, api_key=strict.token,
                    ls_project_id=project.id, backend_url=backend_server.url, progress=False)
    finally:
        strict.stop()
