// Step 4 in the browser (procedure ⑩-⑬): the key pair is made by WebCrypto (ECDSA P-256) and never leaves the page
// but inside the password-protected PKCS#12 file; the CSR and the PKCS#12 file are built with pkijs (ASN.1 and
// PKCS#12 by a maintained library, not by hand). `lib` is the vendored bundle: {pkijs, asn1js}.

const OID_COMMON_NAME = "2.5.4.3";
const OID_LOCAL_KEY_ID = "1.2.840.113549.1.9.21";
const OID_FRIENDLY_NAME = "1.2.840.113549.1.9.20";
const OID_KEY_BAG = "1.2.840.113549.1.12.10.1.2"; // pkcs8ShroudedKeyBag
const OID_CERT_BAG = "1.2.840.113549.1.12.10.1.3";
const ITERATIONS = 100000;

/** Return PEM text of DER bytes under `label`. */
export function toPem(label, der) {
  const bytes = new Uint8Array(der);
  let binary = "";
  for (const byte of bytes) binary += String.fromCharCode(byte);
  const lines = btoa(binary).match(/.{1,64}/g) || [];
  return `-----BEGIN ${label}-----\n${lines.join("\n")}\n-----END ${label}-----\n`;
}

/** Return the DER bytes of every PEM block in `text` (certificates only). */
export function fromPem(text) {
  const blocks = text.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) || [];
  return blocks.map((block) => {
    const body = block.replace(/-----(BEGIN|END) CERTIFICATE-----/g, "").replace(/\s+/g, "");
    return Uint8Array.from(atob(body), (c) => c.charCodeAt(0)).buffer;
  });
}

/** Make an ECDSA P-256 key pair (extractable only so that it can go into the PKCS#12 file) and its CSR, PEM. */
export async function makeKeyAndCsr(lib, commonName) {
  const { pkijs, asn1js } = lib;
  const keys = await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, true, ["sign", "verify"]);
  const csr = new pkijs.CertificationRequest();
  csr.version = 0;
  csr.subject.typesAndValues.push(
    new pkijs.AttributeTypeAndValue({ type: OID_COMMON_NAME, value: new asn1js.Utf8String({ value: commonName }) }),
  );
  csr.attributes = [];
  await csr.subjectPublicKeyInfo.importKey(keys.publicKey);
  await csr.sign(keys.privateKey, "SHA-256");
  return { keys, csrPem: toPem("CERTIFICATE REQUEST", csr.toSchema().toBER(false)) };
}

function bag(lib, bagId, bagValue, attributes) {
  const { pkijs } = lib;
  return new pkijs.SafeBag({ bagId, bagValue, bagAttributes: attributes });
}

/**
 * Package the private key, its certificate and the CA chain as a PKCS#12 file protected by `password`
 * (PBES2: PBKDF2-SHA-256 and AES-256-CBC for the key and the certificates; an HMAC-SHA-256 MAC), as browsers and
 * operating systems import it. The password must be ASCII (PKCS#12's password encodings agree only there).
 */
export async function packPkcs12(lib, { privateKey, certificatePem, chainPem, password, friendlyName }) {
  const { pkijs, asn1js } = lib;
  const secret = new TextEncoder().encode(password).buffer;
  const localKeyId = crypto.getRandomValues(new Uint8Array(20)).buffer;
  const pkcs8 = await crypto.subtle.exportKey("pkcs8", privateKey);
  const [leafDer] = fromPem(certificatePem);
  const chain = fromPem(chainPem);
  const pairing = () => [
    new pkijs.Attribute({ type: OID_LOCAL_KEY_ID, values: [new asn1js.OctetString({ valueHex: localKeyId })] }),
    new pkijs.Attribute({ type: OID_FRIENDLY_NAME, values: [new asn1js.BmpString({ value: friendlyName })] }),
  ];
  const certificateBags = [
    bag(lib, OID_CERT_BAG, new pkijs.CertBag({ parsedValue: pkijs.Certificate.fromBER(leafDer) }), pairing()),
    ...chain.map((der) => bag(lib, OID_CERT_BAG, new pkijs.CertBag({ parsedValue: pkijs.Certificate.fromBER(der) }))),
  ];
  const keyBag = bag(
    lib,
    OID_KEY_BAG,
    new pkijs.PKCS8ShroudedKeyBag({ parsedValue: pkijs.PrivateKeyInfo.fromBER(pkcs8) }),
    pairing(),
  );
  const encryption = {
    password: secret,
    contentEncryptionAlgorithm: { name: "AES-CBC", length: 256 },
    hmacHashAlgorithm: "SHA-256",
    iterationCount: ITERATIONS,
  };
  const pfx = new pkijs.PFX({
    parsedValue: {
      integrityMode: 0, // password integrity: an HMAC over the contents
      authenticatedSafe: new pkijs.AuthenticatedSafe({
        parsedValue: {
          safeContents: [
            { privacyMode: 0, value: new pkijs.SafeContents({ safeBags: [keyBag] }) }, // the key bag is shrouded
            { privacyMode: 1, value: new pkijs.SafeContents({ safeBags: certificateBags }) }, // password-encrypted
          ],
        },
      }),
    },
  });
  await keyBag.bagValue.makeInternalValues(encryption);
  await pfx.parsedValue.authenticatedSafe.makeInternalValues({ safeContents: [{}, encryption] });
  await pfx.makeInternalValues({
    password: secret,
    iterations: ITERATIONS,
    pbkdf2HashAlgorithm: "SHA-256",
    hmacHashAlgorithm: "SHA-256",
  });
  return pfx.toSchema().toBER(false);
}
