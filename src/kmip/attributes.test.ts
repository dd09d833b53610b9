/** The one attribute model over the 1.x and 2.x encodings. */
import { describe, expect, it } from 'vitest';
import { Tag } from './tags.js';
import { ttlv } from './ttlv.js';
import { CryptographicAlgorithm } from './enums.js';
import { readAttributeNames, readTemplate, searchValue, writeAttribute, writeAttribute2 } from './attributes.js';
import { KmipError } from './operations/context.js';

const a1 = (name: string, value: ReturnType<typeof ttlv.int>, index?: number) =>
  ttlv.struct(Tag.Attribute, [ttlv.text(Tag.AttributeName, name), ...(index === undefined ? [] : [ttlv.int(Tag.AttributeIndex, index)]), { ...value, tag: Tag.AttributeValue }]);

describe('KMIP attributes', () => {
  it('reads a 1.x Template-Attribute and a 2.x Attributes structure to the same model', () => {
    const name = ttlv.struct(Tag.AttributeValue, [ttlv.text(Tag.NameValue, 'k1'), ttlv.enumeration(Tag.NameType, 1)]);
    const v1 = readTemplate(ttlv.struct(Tag.RequestPayload, [ttlv.struct(Tag.TemplateAttribute, [a1('Cryptographic Algorithm', ttlv.enumeration(0, CryptographicAlgorithm.AES)), a1('Cryptographic Length', ttlv.int(0, 256), 0), a1('Name', name)])]));
    const v2 = readTemplate(
      ttlv.struct(Tag.RequestPayload, [
        ttlv.struct(Tag.Attributes, [ttlv.enumeration(Tag.CryptographicAlgorithm, CryptographicAlgorithm.AES), ttlv.int(Tag.CryptographicLength, 256), { ...name, tag: Tag.Name }]),
      ]),
    );
    expect(v1.map((a) => [a.name, a.index, searchValue(a.name, a.value)])).toEqual([
      ['Cryptographic Algorithm', 0, '3'],
      ['Cryptographic Length', 0, '256'],
      ['Name', 0, 'k1'],
    ]);
    expect(v2.map((a) => [a.name, a.index, searchValue(a.name, a.value)])).toEqual(v1.map((a) => [a.name, a.index, searchValue(a.name, a.value)]));
  });

  it('gives repeated values consecutive indexes, and writes both encodings back', () => {
    const attrs = readTemplate(ttlv.struct(Tag.RequestPayload, [ttlv.struct(Tag.TemplateAttribute, [a1('x-Tag', ttlv.text(0, 'a') as never), a1('x-Tag', ttlv.text(0, 'b') as never)])]));
    expect(attrs.map((a) => a.index)).toEqual([0, 1]);
    const w = writeAttribute(attrs[1]);
    expect(w.tag).toBe(Tag.Attribute);
    expect(w.value).toHaveLength(3);
    expect(writeAttribute2(attrs[0])).toBeUndefined(); // custom attributes have no 2.x tag here
  });

  it('reads Attribute Names (1.x) and Attribute References (2.x)', () => {
    expect(readAttributeNames(ttlv.struct(Tag.RequestPayload, [ttlv.text(Tag.UniqueIdentifier, 'x'), ttlv.text(Tag.AttributeName, 'State'), ttlv.text(Tag.AttributeName, 'x-Vendor')]))).toEqual(['State', 'x-Vendor']);
    expect(readAttributeNames(ttlv.struct(Tag.RequestPayload, [ttlv.enumeration(Tag.AttributeReference, Tag.State)]))).toEqual(['State']);
  });

  it('refuses an Attribute without a name or value, and an unknown 2.x attribute tag', () => {
    expect(() => readTemplate(ttlv.struct(Tag.RequestPayload, [ttlv.struct(Tag.TemplateAttribute, [ttlv.struct(Tag.Attribute, [ttlv.text(Tag.AttributeName, 'Name')])])]))).toThrow(KmipError);
    expect(() => readTemplate(ttlv.struct(Tag.RequestPayload, [ttlv.struct(Tag.Attributes, [ttlv.text(Tag.Data, 'x')])]))).toThrow(KmipError);
  });
});
