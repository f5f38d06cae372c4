"""The contract every process shares: wire messages (``messages``, ``codec``), topic names
(``topics``), error codes (``errors``) and how a setting is declared (``settings``).

Import the submodule you need (``from binbaton.schemas.messages import Request``): this
package imports nothing, so the engine can use ``errors`` without msgspec installed.
"""
