"""The one seam into google-adk's internals.

adk-cancel needs a few things ADK does not offer as documented, public API. Every one of
them is reached through this package and nowhere else, so that a new ADK release is checked
in one place. Each hook names the ADK versions it was read and tested on, and
:mod:`.checks` tells at install time which hooks the running ADK lacks and which guarantee
is lost with each: a warning naming the version, never a silent downgrade.

- **web server** (:mod:`.web_server`): ADK's ``AdkWebServer``, found through its route
  handlers' closures (``runner_dict``, ``extra_plugins``, ``runners_to_clean``,
  ``session_service``, ``get_runner_async``, ``default_app_name``). Checked on 2.13.0,
  2.14.1, 2.15.0.
- **abort** (:mod:`.invocation`): ``InvocationContext.abort()`` and the seal ADK writes for
  an aborted run; ``CallbackContext._invocation_context`` (private). Checked on 2.13.0,
  2.14.1, 2.15.0.
- **rewind** (:mod:`.rewind`): ``Runner.rewind_async`` and ``InvocationNotFoundError``.
  Checked on 2.13.0, 2.14.1, 2.15.0.
- **live handler** (:mod:`.live`): the tasks ADK's ``/run_live`` handler reads and sends
  from, which it leaves running when it is cancelled. Checked on 2.13.0, 2.14.1, 2.15.0.
- **models** (:mod:`.models`): ``LlmCapabilities`` (a private module) and
  ``BaseLlmConnection``'s abstract methods (``send_context_update`` since 2.15). Checked on
  2.13.0, 2.14.1, 2.15.0.
- **ADK's commands** (:mod:`.commands`): ``cli_tools_click.cli_api_server`` / ``cli_web``,
  and ``fast_api.get_fast_api_app`` swapped while the command runs. Checked on 2.13.0,
  2.14.1, 2.15.0.
- **a native ``:cancel``** (:mod:`.native_cancel`): ADK's own cancel route, if a release
  ships one (open PR #5983); none does up to 2.15.0.
- **the version** (:mod:`.version`): the tested range, and the warning outside it.

This package imports nothing else of adk-cancel's: every other part may import it, it
imports none of them.
"""
