"""A scripted KMIP session with Debian's PyKMIP client library against a running server.

Usage: pykmip_session.py HOST PORT CERT KEY CA VERSION [MODE]
VERSION is 1.1, 1.2, 1.4 or 2.0. MODE "full" (default) runs the whole session; MODE "refused"
only tries a Create (for a client whose certificate is not installed). Prints one JSON object:
each step's result, or the exception it raised (class, result reason name).
"""
import json
import os
import sys

from kmip import enums
from kmip.core.factories import attributes as attr_factory
from kmip.pie import client as pie_client
from kmip.pie import exceptions as pie_exc
from kmip.pie import objects

host, port, cert, key, ca, version = sys.argv[1:7]
mode = sys.argv[7] if len(sys.argv) > 7 else "full"
versions = {
    "1.1": enums.KMIPVersion.KMIP_1_1,
    "1.2": enums.KMIPVersion.KMIP_1_2,
    "1.4": enums.KMIPVersion.KMIP_1_4,
    "2.0": enums.KMIPVersion.KMIP_2_0,
}
out = {}


def step(name, fn):
    try:
        out[name] = {"ok": True, "value": fn()}
    except pie_exc.KmipOperationFailure as e:
        out[name] = {"ok": False, "status": e.status.name, "reason": e.reason.name if e.reason else None, "message": e.message}
    except Exception as e:  # noqa: BLE001 - reported to the test, which asserts on it
        out[name] = {"ok": False, "error": type(e).__name__, "message": str(e)}
    return out[name]


c = pie_client.ProxyKmipClient(
    hostname=host, port=int(port), cert=cert, key=key, ca=ca, kmip_version=versions[version], config_file="/dev/null"
)
c.open()
try:
    if mode == "refused":
        step("create", lambda: c.create(enums.CryptographicAlgorithm.AES, 256))
        step("query", lambda: c.proxy.query(query_functions=[enums.QueryFunction.QUERY_OPERATIONS]).result_status.value.name)
    else:
        def discover():
            r = c.proxy.discover_versions()
            return [[v.major, v.minor] for v in r.protocol_versions]

        step("discover_versions", discover)

        def query():
            r = c.proxy.query(
                query_functions=[
                    enums.QueryFunction.QUERY_OPERATIONS,
                    enums.QueryFunction.QUERY_OBJECTS,
                    enums.QueryFunction.QUERY_SERVER_INFORMATION,
                ]
            )
            return {
                "status": r.result_status.value.name,
                "operations": sorted(o.name for o in r.operations),
                "objects": sorted(o.name for o in r.object_types),
                "vendor": r.vendor_identification,
            }

        step("query", query)
        masks = [enums.CryptographicUsageMask.ENCRYPT, enums.CryptographicUsageMask.DECRYPT]
        name = "pykmip-" + version + "-" + os.urandom(4).hex()
        created = step("create", lambda: c.create(enums.CryptographicAlgorithm.AES, 256, name=name, cryptographic_usage_mask=masks))
        uid = created.get("value")

        def attrs(names):
            _, a = c.get_attributes(uid, names)
            res = {}
            for x in a:
                n = x.attribute_name.value
                v = x.attribute_value
                if n == "Name":
                    res[n] = v.name_value.value
                elif hasattr(v, "value") and hasattr(v.value, "name"):
                    res[n] = v.value.name
                elif hasattr(v, "value"):
                    res[n] = v.value if isinstance(v.value, (int, str)) else str(v.value)
                else:
                    res[n] = str(v)
            return res

        step("get_attributes_created", lambda: attrs(["State", "Cryptographic Algorithm", "Cryptographic Length", "Name", "Object Type"]))
        step("get_attribute_list", lambda: sorted(c.get_attribute_list(uid)))
        step("locate_by_name", lambda: c.locate(attributes=[attr_factory.AttributeFactory().create_attribute(enums.AttributeType.NAME, name)]))
        step("get_preactive", lambda: len(c.get(uid).value))
        step("activate", lambda: c.activate(uid))
        step("get_attributes_active", lambda: attrs(["State"]))
        step("locate_active_keys", lambda: uid in c.locate(attributes=[
            attr_factory.AttributeFactory().create_attribute(enums.AttributeType.OBJECT_TYPE, enums.ObjectType.SYMMETRIC_KEY),
            attr_factory.AttributeFactory().create_attribute(enums.AttributeType.STATE, enums.State.ACTIVE),
        ]))
        step("locate_paged", lambda: len(c.locate(maximum_items=1)))
        params = {
            "block_cipher_mode": enums.BlockCipherMode.CBC,
            "padding_method": enums.PaddingMethod.PKCS5,
            "cryptographic_algorithm": enums.CryptographicAlgorithm.AES,
            "random_iv": True,
        }
        secret = b"attack at dawn, bring snacks"

        def roundtrip():
            ct, iv = c.encrypt(secret, uid, cryptographic_parameters=params)
            pt = c.decrypt(ct, uid, cryptographic_parameters=params, iv_counter_nonce=iv)
            return {"iv_len": len(iv), "ct_len": len(ct), "same": pt == secret, "changed": ct != secret}

        step("encrypt_decrypt", roundtrip)
        step("destroy_active", lambda: c.destroy(uid))
        step("revoke", lambda: c.revoke(enums.RevocationReasonCode.CESSATION_OF_OPERATION, uid))
        step("get_attributes_revoked", lambda: attrs(["State"]))
        step("destroy", lambda: c.destroy(uid))
        step("get_destroyed", lambda: len(c.get(uid).value))
        step("get_unknown", lambda: c.get("dek_00000000000000000000000000"))

        key_bytes = bytes(range(32))
        sk = objects.SymmetricKey(enums.CryptographicAlgorithm.AES, 256, key_bytes, masks, name="registered-" + name)
        reg = step("register_key", lambda: c.register(sk))
        step("get_registered", lambda: c.get(reg.get("value")).value.hex())
        sd = objects.SecretData(b"s3cret-pa55word!", enums.SecretDataType.PASSWORD, masks=[enums.CryptographicUsageMask.DERIVE_KEY], name="secret-" + name)
        reg2 = step("register_secret", lambda: c.register(sd))
        step("get_secret", lambda: {"value": c.get(reg2.get("value")).value.decode(), "type": type(c.get(reg2.get("value"))).__name__})
        step("locate_secret", lambda: c.locate(attributes=[attr_factory.AttributeFactory().create_attribute(enums.AttributeType.OBJECT_TYPE, enums.ObjectType.SECRET_DATA)]))
        out["ids"] = {"created": uid, "registered": reg.get("value"), "secret": reg2.get("value")}
finally:
    c.close()
print(json.dumps(out, default=str))
