// The one ES module the setup wizard imports: pkijs (CSR, PKCS#12) and asn1js (its ASN.1 layer).
export * as pkijs from "pkijs";
export * as asn1js from "asn1js";
